"""Shipping a model trained on all the images (--val-size 0): its card gives and names its validating twin's
accuracy, twins that are not identical are refused, its int8 model is measured on its own training images and
says so, and its "not sure" threshold comes from the twin."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_config, write_folder

from mobilenet import checkpoint, ood, shipping, train
from mobilenet.__main__ import main
from mobilenet.checkpoint import CheckpointError
from mobilenet.config import TrainConfig
from mobilenet.onnx_export import MAX_INT8_LOSS, TRAINING
from mobilenet.runs import LAST_EPOCH, RunFolder
from mobilenet.shipping import ALL_IMAGES, TWIN, Twin

VAL_SIZE = 12  # a fifth of the 60 images


@dataclass(frozen=True)
class Runs:
    data: Path
    root: Path  # the decode cache
    twin: Path  # holds VAL_SIZE images out
    full: Path  # trains on all of them, settings otherwise identical


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data: Path, root: Path, **overrides) -> TrainConfig:
    return tiny_config(data, root, **({"epochs": 2, "val_size": VAL_SIZE} | overrides))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("full")
    data, root = write_folder(base / "images", per_class=20, splits=("train",)), base / "root"
    torch.set_num_threads(1)
    train.train(tiny(data, root), base / "runs" / "twin")
    train.train(tiny(data, root, val_size=0), base / "runs" / "full")
    return Runs(data, root, base / "runs" / "twin", base / "runs" / "full")


def copy_run(source: Path, target: Path, **settings) -> Path:
    """A copy of a run folder whose config.json has these settings changed."""
    shutil.copytree(source, target)
    folder = RunFolder(target)
    folder.write_config(replace(folder.read_config(), **settings))
    return target


# ---- export -------------------------------------------------------------------------------------


def test_a_full_data_model_ships_with_its_twins_validation_accuracy(runs: Runs, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    monkeypatch.setenv("MOBILENET_CHECKPOINTS", str(shipped))  # the folder the app serves keeps the cards
    assert main(["export", str(runs.twin), str(shipped / "validated.pt")]) == 0
    assert main(["export", str(runs.full), str(shipped / "full.pt"), "--data-description", "three classes",
                 "--validated-by", str(runs.twin)]) == 0
    assert "(its validating twin twin's; it trained on all the images)" in capsys.readouterr().out

    card = checkpoint.load(shipped / "full.pt")[1]
    last = RunFolder(runs.twin).read_report().last_epoch  # the twin's last epoch vouches for the full run's
    t = card.training
    assert (t["val_acc"], t["val_n"], t["per_class"]) == (last.accuracy, VAL_SIZE, last.per_class)
    assert t[TWIN] == {"run": "twin", "val_size": VAL_SIZE, "seed": 0, "this_model": ALL_IMAGES}
    assert Twin.of(card) == Twin("twin", VAL_SIZE, 0) and Twin.of(checkpoint.load(shipped / "validated.pt")[1]) is None
    assert card.data.val_size == 0 and t["data"] == "three classes"
    assert t["epochs"] == 2 and t["train_time_s"] > 0  # the full run's own training

    readme = (shipped / "README.md").read_text()
    overview = [line for line in readme.splitlines() if line.startswith("| `")]
    assert overview[0].endswith(f"| {last.accuracy:.2%}† | – |")  # full.pt
    own = RunFolder(runs.twin).read_report().validation.accuracy
    assert overview[1].endswith(f"| {own:.2%} | – |")  # validated.pt: its best epoch on its own split, unmarked
    assert "† Measured on its validating twin: the identical recipe with a seeded validation split held out." in readme
    assert (f"| validation accuracy | {last.accuracy:.2%} on {VAL_SIZE} held-out images (seeded, stratified; "
            f"seed 0) with flip TTA, measured on run `twin` at its last epoch, the identical recipe with them held "
            f"out; this model trained on all the images, these included, and is its last epoch, with no selection |"
            ) in readme


def test_the_twins_last_epoch_vouches_for_the_full_run_not_its_best(runs: Runs, tmp_path: Path) -> None:
    """The full run ships its last epoch with no selection: its twin's best epoch, chosen on the held-out images,
    would flatter it. A report from before reports recorded the last epoch is taken only where the two agree."""
    twin = copy_run(runs.twin, tmp_path / "twin")
    folder = RunFolder(twin)
    report = json.loads(folder.report.read_text())
    worse = [[0] * 3 for _ in range(3)]
    worse[0][1], worse[1][1], worse[2][2] = 4, 4, 4  # 8 of 12 right
    last = {"accuracy": 8 / 12, "n": 12, "classes": report["classes"], "per_class": {"cat": 0.0, "dog": 1.0,
            "ship": 1.0}, "confusion": worse}
    folder.write_json(folder.report, report | {LAST_EPOCH: last})
    card = shipping.export(runs.full, tmp_path / "out.pt", validated_by=twin)
    assert card.training["val_acc"] == pytest.approx(8 / 12) and card.training["per_class"] == last["per_class"]

    rows = [row for row in folder.read_metrics() if row.kind == "epoch"]
    last_epoch = report.pop(LAST_EPOCH)
    as_before = report | {key: last_epoch[key] for key in ("accuracy", "n", "per_class", "confusion")}
    folder.write_json(folder.report, as_before)  # a report from before LAST_EPOCH, whose last epoch was its best
    again = shipping.export(runs.full, tmp_path / "out.pt", validated_by=twin, overwrite=True)
    assert again.training["val_acc"] == rows[-1].val_acc
    all_right = [[4 if i == j else 0 for j in range(3)] for i in range(3)]
    earlier = all_right if rows[-1].val_acc < 1 else worse
    folder.write_json(folder.report, as_before | {"confusion": earlier})  # an earlier epoch was its best
    with pytest.raises(CheckpointError, match="report gives its best validated epoch .*, not its last, and predates"):
        shipping.export(runs.full, tmp_path / "out.pt", validated_by=twin, overwrite=True)


def test_a_full_data_run_needs_an_identical_twin(runs: Runs, tmp_path: Path) -> None:
    unfinished = copy_run(runs.twin, tmp_path / "unfinished")
    RunFolder(unfinished).report.unlink()
    other_data = copy_run(runs.twin, tmp_path / "other-data")
    best = RunFolder(other_data).best
    card = checkpoint.load(best)[1]
    checkpoint.replace_card(best, replace(card, data=replace(card.data, fingerprint="0" * 16)))
    refusals = [  # (run, its twin, what the refusal says)
        (runs.full, None, "held none out, so it has no validation accuracy of its own: give the run that validated "
                          "its recipe with --validated-by RUN"),
        (runs.twin, runs.full, "twin held out its own validation split"),
        (runs.full, runs.full, "full cannot validate full: it held out no validation images either"),
        (runs.full, unfinished, "unfinished cannot validate full: it is not a finished run"),
        (runs.full, copy_run(runs.twin, tmp_path / "other-lr", lr=0.1),
         "other-lr is not the validating twin of full: besides --val-size, their training settings differ: "
         "--lr 0.05 in full, 0.1 in other-lr"),
        (runs.full, copy_run(runs.twin, tmp_path / "longer", epochs=None), "--epochs 2 in full, 30 in longer"),
        (runs.full, other_data, "--data: fingerprint"),
    ]
    out = tmp_path / "out.pt"
    for run, twin, message in refusals:
        with pytest.raises(CheckpointError, match=re.escape(message)):
            shipping.export(run, out, validated_by=twin)
        assert not out.exists()


def test_a_twin_may_differ_in_where_and_how_fast_it_ran_and_in_how_its_data_is_spelled(runs: Runs,
                                                                                     tmp_path: Path) -> None:
    twin = copy_run(runs.twin, tmp_path / "twin", device="auto", compile=True, data_root=str(tmp_path),
                    download=False, data=f"{runs.data}/.", epochs=2)
    card = shipping.export(runs.full, tmp_path / "out.pt", validated_by=twin)
    assert Twin.of(card) == Twin("twin", VAL_SIZE, 0)


def test_settings_compare_with_the_recipes_values_resolved() -> None:
    base = TrainConfig(data="cifar10", data_root="data")
    assert base.setting_differences(replace(base, epochs=30, lr=0.2, tta="flip")) == {}  # fast's own
    assert base.setting_differences(replace(base, val_size=0, device="cpu", compile=True)) == {}
    assert base.setting_differences(replace(base, lr=0.1, cutout=8)) == {"lr": (0.2, 0.1), "cutout": (0, 8)}


# ---- the int8 model -----------------------------------------------------------------------------


def test_a_full_data_models_int8_model_is_measured_on_its_training_images(runs: Runs, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    monkeypatch.setenv("MOBILENET_CHECKPOINTS", str(shipped))  # the folder the app serves keeps the cards
    path = shipped / "full.pt"
    shipping.export(runs.full, path, validated_by=runs.twin)
    assert main(["export-onnx", str(path), "--data", str(runs.data), "--data-root", str(runs.root)]) == 0
    assert f"on {VAL_SIZE} training images" in capsys.readouterr().out
    int8 = shipping.int8_model(path, checkpoint.read(path))
    q = int8.quantization
    assert q.measured_on == TRAINING and not q.held_out and q.images == VAL_SIZE and q.loss <= MAX_INT8_LOSS
    readme = (shipped / "README.md").read_text()
    assert f"| {shipping.int8_cell(int8)} |" in readme and shipping.int8_cell(int8).endswith(
        " points against fp32 on training images")
    assert (f"{q.int8_accuracy:.2%} accuracy on {VAL_SIZE} training images of this model (a seeded sample: it held "
            f"none out, so this measures the rounding, not new images)") in readme
    assert "none of those measured on |" in readme


# ---- the "not sure" threshold -------------------------------------------------------------------


def test_a_full_data_model_is_calibrated_on_its_twins_answers(runs: Runs, tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    shipping.export(runs.full, path, validated_by=runs.twin)
    twin_split = checkpoint.load(RunFolder(runs.twin).best)[1].data
    assert ood.calibration(path, [tmp_path, runs.twin]) == ood.Calibration(RunFolder(runs.twin).best, twin_split,
                                                                            "twin")
    with pytest.raises(CheckpointError, match="give the twin's run folder, twin"):
        ood.calibration(path, [tmp_path])
    other = tmp_path / "elsewhere" / "twin"
    shutil.copytree(runs.twin, other)
    best = RunFolder(other).best
    checkpoint.replace_card(best, replace(checkpoint.load(best)[1], tta="none"))
    with pytest.raises(CheckpointError, match="is not the validating twin full.pt records"):
        ood.calibration(path, [other])

    validated = tmp_path / "validated.pt"
    card = shipping.export(runs.twin, validated)
    assert ood.calibration(validated, [runs.twin]) == ood.Calibration(validated, card.data)


def test_a_threshold_keeps_its_share_of_held_out_images() -> None:
    assert ood.calibrate(torch.linspace(0, 1, 101)) == pytest.approx(1 - ood.KEEP)


@pytest.mark.parametrize("loss, said", [(0.0, "0.00"), (0.0002, "-0.02"), (-0.0012, "+0.12"), (0.00001, "0.00")])
def test_int8s_change_against_fp32_is_signed_and_none_is_plain(loss: float, said: str) -> None:
    """An int8 model as good as its fp32 graph read "-0.00 points" on its card (α=0.75, session 17)."""
    int8 = SimpleNamespace(quantization=SimpleNamespace(held_out=False, loss=loss))
    assert shipping.int8_cell(int8) == f"{said} points against fp32 on training images"
