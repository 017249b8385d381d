from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mobilenet import checkpoint, train
from mobilenet.config import RECIPES, TrainConfig
from mobilenet.data import DataError, ImageSet
from mobilenet.__main__ import main as cli_main
from mobilenet.runs import RunFolder, RunState
from mobilenet.device import device_name
from mobilenet.evaluate import Evaluation, score
from mobilenet.shipping import card_markdown
from mobilenet.train import augment, device_label, step_generator

from helpers import run_cli, tiny_config, wait_for, write_folder, zip_folder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "images", per_class=40)


def config(folder: Path, tmp_path: Path, **overrides) -> TrainConfig:
    return tiny_config(folder, tmp_path / "root", **overrides)


def stop_in_epoch(n: int):
    """An on_step callback that stops the run (SIGTERM, as a user would) once its epoch n has begun."""
    def stop(row) -> None:
        if row.epoch == n:
            os.kill(os.getpid(), signal.SIGTERM)
    return stop


def edit_last(run: RunFolder, change) -> None:
    """Rewrite the run's last.pt with change(payload) applied, as a checkpoint saved elsewhere or earlier would be."""
    payload = checkpoint.read(run.last)
    change(payload)
    checkpoint.save(run.last, *checkpoint.restore(payload, "last.pt"), payload["train_state"])


def here() -> str:
    return device_name(torch.device("cpu"))


def epoch_rows(run: Path) -> list[dict]:
    return [row for row in RunFolder(run).read_metrics() if row.kind == "epoch"]


def test_loss_falls_and_run_folder_is_complete(folder: Path, tmp_path: Path) -> None:
    report = train.train(config(folder, tmp_path, epochs=8), tmp_path / "run")
    rows = epoch_rows(tmp_path / "run")
    assert [r.epoch for r in rows] == list(range(1, 9))
    assert rows[-1].train_loss < rows[0].train_loss
    measured, last = report.validation, report.last_epoch
    assert measured.accuracy >= 0.9  # three easy classes; chance is 1/3
    assert int(measured.confusion.sum()) == measured.n == 24
    assert last.accuracy == rows[-1].val_acc and last.n == 24  # whichever epoch was best
    assert RunFolder(tmp_path / "run").read_report().to_dict() == report.to_dict()  # what train returned
    keys = {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_per_s", "elapsed_s", "eta_s"}
    written = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(keys <= set(r) for r in written if r["kind"] == "epoch")
    assert any(r.kind == "step" for r in RunFolder(tmp_path / "run").read_metrics())
    run = tmp_path / "run"
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    model, card = checkpoint.load(run / "best.pt")
    assert card.training["val_acc"] == measured.accuracy and card.classes == ("cat", "dog", "ship")
    assert "train_state" not in checkpoint.read(run / "best.pt")  # shipped files stay small


def test_the_report_is_the_best_epochs_own_validation_not_a_second_pass(folder: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    passes = []
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: passes.append(1) or real(*args, **kwargs))
    report = train.train(config(folder, tmp_path, epochs=2), tmp_path / "run")
    assert len(passes) == 2  # one per epoch
    assert report.validation.accuracy == max(row.val_acc for row in epoch_rows(tmp_path / "run"))
    stored = checkpoint.read(tmp_path / "run" / "best.pt")["card"]["training"]
    assert stored["val_acc"] == report.validation.accuracy and report.validation.n == 24


def test_the_best_models_card_gives_the_epoch_of_its_weights(folder: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A card (and the README's, once exported) said the run's length for an earlier epoch's weights."""
    real, calls = train.evaluate, []

    def second_epoch_worse(model: torch.nn.Module, data: ImageSet, inference) -> Evaluation:
        calls.append(1)
        if len(calls) == 2:  # every answer wrong
            return score(torch.nn.functional.one_hot((data.labels + 1) % 3, 3).float(), data)
        return real(model, data, inference)

    monkeypatch.setattr(train, "evaluate", second_epoch_worse)
    train.train(config(folder, tmp_path, epochs=2), tmp_path / "run")
    first, second = epoch_rows(tmp_path / "run")
    assert first.val_acc > second.val_acc
    stored = checkpoint.read(tmp_path / "run" / "best.pt")["card"]["training"]
    assert (stored["epochs"], stored["planned_epochs"], stored["val_acc"]) == (1, 2, first.val_acc)


def test_without_validation_the_model_is_the_last_epochs(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = train.train(config(folder, tmp_path, epochs=2, val_size=0, ema=0.9), run)
    best, last = checkpoint.read(run / "best.pt"), checkpoint.read(run / "last.pt")
    average = last["train_state"]["ema"]["weights"]  # what ships is the average, after the last epoch
    assert all(torch.equal(best["state_dict"][k], average[k]) for k in average)
    assert best["card"]["training"]["epochs"] == 2
    # nothing was scored: no accuracy anywhere rather than 0% on 0 images
    assert best["card"]["training"]["val_acc"] is None and report.best_val_acc is None
    assert report.validation is None and "accuracy" not in json.loads((run / "report.json").read_text())


def test_seed_recipe_is_the_seed() -> None:
    seed = RECIPES["seed"]
    assert (seed.batch_size, seed.lr, seed.momentum, seed.weight_decay, seed.epochs) == (64, 0.1, 0.9, 5e-4, 20)
    assert seed.schedule == "plateau" and seed.normalization.mean == (0.5, 0.5, 0.5) and not seed.nesterov


def test_seed_plateau_halves_lr_after_six_flat_epochs_down_to_min_lr() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    plateau = train.make_plateau(optimizer)
    lrs = []
    for _ in range(200):
        plateau.step(1.0)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:6] == [0.1] * 6 and lrs[6] == pytest.approx(0.05)
    assert min(lrs) == pytest.approx(1e-6)


def test_onecycle_warms_up_for_the_recipes_epochs_or_a_fifth_of_a_short_run() -> None:
    fast, per_epoch = RECIPES["fast"], 351

    def lrs(epochs: int) -> list[float]:
        return [train.onecycle_lr(fast, step, epochs * per_epoch, per_epoch) for step in range(epochs * per_epoch)]

    long = lrs(30)
    assert long.index(max(long)) == 2 * per_epoch - 1 and max(long) == pytest.approx(fast.lr)  # the recipe's 2 epochs
    for epochs in (1, 2, 3):  # the warm-up would fill a run of 2 epochs, which would then never anneal
        short = lrs(epochs)
        assert short.index(max(short)) == round(0.2 * epochs * per_epoch) - 1 and max(short) == pytest.approx(fast.lr)
        decay = short[short.index(max(short)):]
        assert decay[-1] < 0.01 * fast.lr and decay == sorted(decay, reverse=True)  # down to about 0 at the end


def test_augment_is_a_crop_and_flip_of_the_padded_image() -> None:
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = augment(images, step_generator(0, 0, 0, torch.device("cpu")), pad=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for original, crop in zip(padded, out):
        windows = [original[:, y:y + 8, x:x + 8] for y in range(5) for x in range(5)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(2)) for w in windows)
    again = augment(images, step_generator(0, 0, 0, torch.device("cpu")), pad=2)
    assert torch.equal(out, again)


@pytest.mark.parametrize("recipe", [{}, {"ema": 0.9, "cutout": 8}, {"recipe": "seed"}],
                         ids=["default", "ema-cutout", "seed-plateau"])
def test_stop_then_resume_matches_an_uninterrupted_run(folder: Path, tmp_path: Path, recipe: dict) -> None:
    cfg = config(folder, tmp_path, **recipe)
    train.train(cfg, tmp_path / "straight")

    def stop_mid_epoch_two(row: dict) -> None:
        if row.epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train.train(cfg, tmp_path / "resumed", on_step=stop_mid_epoch_two)
    assert stopped is None
    assert json.loads((tmp_path / "resumed" / "status.json").read_text())["state"] == "stopped"
    train.train(cfg, tmp_path / "resumed", resume=True)

    straight, resumed = (checkpoint.read(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in straight["state_dict"])
    momentum = [(s["momentum_buffer"], r["momentum_buffer"]) for s, r in zip(
        straight["train_state"]["optimizer"]["state"].values(), resumed["train_state"]["optimizer"]["state"].values())]
    assert momentum and all(torch.equal(s, r) for s, r in momentum)
    # Three epochs never reach the plateau's patience: its state (epochs counted, best loss) shows it was restored.
    assert straight["train_state"]["plateau"] == resumed["train_state"]["plateau"]
    if cfg.ema:
        averages = [state["train_state"]["ema"]["weights"] for state in (straight, resumed)]
        assert all(torch.equal(averages[0][k], averages[1][k]) for k in averages[0])
        best = checkpoint.read(tmp_path / "resumed" / "best.pt")["state_dict"]  # the average ships, not the weights
        assert not all(torch.equal(best[k], resumed["state_dict"][k]) for k in best)
    a, b = epoch_rows(tmp_path / "straight"), epoch_rows(tmp_path / "resumed")
    assert [r.epoch for r in b] == [1, 2, 3]
    for x, y in zip(a, b):  # exactly
        assert (x.train_loss, x.val_acc, x.lr) == (y.train_loss, y.val_acc, y.lr)


def test_the_eta_follows_this_processs_pace_not_the_time_before_a_resume(folder: Path, tmp_path: Path) -> None:
    run, cfg = RunFolder(tmp_path / "run"), config(folder, tmp_path, epochs=5)
    train.train(cfg, run.path, on_step=stop_in_epoch(2))
    week = 7 * 24 * 3600.0  # as if the run had then been paused for a week, or moved to a faster device
    edit_last(run, lambda payload: payload["train_state"]["loop"].update(elapsed_s=week))
    before = len(RunFolder(run.path).read_metrics())
    train.train(cfg, run.path, resume=True)
    rows = RunFolder(run.path).read_metrics()
    resumed = [r for r in rows if r.elapsed_s >= week]
    assert len(resumed) >= 4 and len(rows) - len(resumed) <= before
    assert all(r.eta_s < 600 for r in resumed) and resumed[-1].eta_s == 0  # seconds left, not days
    assert all(r.eta_s > 0 for r in resumed if r.step < r.total_steps)
    epochs = [r.epochs_done(5) for r in rows]
    assert epochs == sorted(epochs) and epochs[-1] == 5 and len({r.total_steps for r in rows}) == 1


def test_a_run_carried_without_its_best_model_chooses_it_again_and_finishes(folder: Path, tmp_path: Path) -> None:
    run, cfg = RunFolder(tmp_path / "run"), config(folder, tmp_path, epochs=4)
    train.train(cfg, run.path, on_step=stop_in_epoch(3))
    # an earlier epoch that no later one beats, its best.pt not carried
    edit_last(run, lambda payload: payload["train_state"]["loop"].update(best_acc=1.0))
    run.best.unlink()
    report = train.train(cfg, run.path, resume=True)
    assert report.best_val_acc < 1.0
    assert checkpoint.load(run.best)[1].training["val_acc"] == report.best_val_acc


def test_a_run_moved_between_devices_says_how_many_epochs_each_trained(folder: Path, tmp_path: Path) -> None:
    run, cfg = RunFolder(tmp_path / "run"), config(folder, tmp_path, epochs=6)
    train.train(cfg, run.path, on_step=stop_in_epoch(3))
    saved = checkpoint.read(run.last)["train_state"]["loop"]
    done = saved["epoch"]
    assert [d[:2] for d in saved["devices"]] == [[device_label(here()), done]]

    def as_a_gpu_lease_saved_it(payload: dict) -> None:  # before devices were counted
        del payload["train_state"]["loop"]["devices"]
        payload["card"]["training"]["device"] = "NVIDIA H200"

    edit_last(run, as_a_gpu_lease_saved_it)
    train.train(cfg, run.path, resume=True)
    _, card = checkpoint.load(run.best)
    devices = card.training["devices"]
    assert [d[:2] for d in devices] == [["NVIDIA H200, bf16 autocast", done], [here(), 6 - done]]
    assert sum(d[2] for d in devices) == pytest.approx(card.training["train_time_s"], abs=0.2)
    assert (f"{done} epochs on NVIDIA H200, bf16 autocast (0 min), then {6 - done} epochs on CPU ("
            in card_markdown("m.pt", card))


def test_validating_every_n_epochs_changes_no_training_and_may_change_on_resume(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = config(folder, tmp_path, epochs=5)
    train.train(cfg, tmp_path / "each")

    run = tmp_path / "every"
    train.train(replace(cfg, val_every=2), run, on_step=stop_in_epoch(3))
    assert cli_main(["train", "--resume", str(run), "--lr", "0.1", "--no-download"]) == 2
    assert ("only --data, --device, --data-root, --val-every, --no-download may change (got --lr)"
            in capsys.readouterr().err)  # each flag as it is typed
    assert cli_main(["train", "--resume", str(run), "--val-every", "4", "--no-download", "--json"]) == 0
    assert RunFolder(run).read_config().val_every == 4 and not RunFolder(run).read_config().download  # kept
    rows, each = epoch_rows(run), {row.epoch: row for row in epoch_rows(tmp_path / "each")}
    assert [r.epoch for r in rows if r.val_acc is not None] == [2, 4, 5]  # every 2, then every 4, and the last
    for row in rows:  # the same training, and the same validation where there is one
        assert row.train_loss == pytest.approx(each[row.epoch].train_loss)
        assert row.val_acc is None or row.val_acc == pytest.approx(each[row.epoch].val_acc)
    best = max((r for r in rows if r.val_acc is not None), key=lambda r: r.val_acc)
    assert json.loads((run / "report.json").read_text())["best_val_acc"] == pytest.approx(best.val_acc)


def test_a_resumed_run_may_read_its_images_from_elsewhere_but_not_other_images(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, images = tmp_path / "run", shutil.copytree(folder, tmp_path / "images")
    train.train(config(images, tmp_path, epochs=3), run, on_step=stop_in_epoch(2))
    moved = images.rename(tmp_path / "moved")  # as on another machine
    other = shutil.copytree(moved, tmp_path / "other")
    sorted((other / "train").rglob("*.png"))[0].unlink()
    assert cli_main(["train", "--resume", str(run), "--data", str(other), "--json"]) == 2
    assert "its images changed since this run started" in capsys.readouterr().err
    assert RunFolder(run).read_config().data == str(images)  # the refused data is not written into the run
    assert cli_main(["train", "--resume", str(run), "--data", str(moved), "--json"]) == 0
    assert RunFolder(run).read_config().data == str(moved)
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mobilenet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def cli_args(folder: Path, tmp_path: Path, out: Path, epochs: int) -> list[str]:
    return ["train", "--data", str(folder), "--alpha", "0.25", "--epochs", str(epochs), "--batch-size", "8",
            "--val-size", "24", "--device", "cpu", "--data-root", str(tmp_path / "root"), "--out", str(out), "--json"]


def test_sigterm_saves_a_loadable_checkpoint_and_exits_0(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = cli(*cli_args(folder, tmp_path, run, 50))
    wait_for(lambda: any(r.kind == "step" for r in RunFolder(run).read_metrics()))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "resume with" in err
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    checkpoint.load(run / "last.pt")


def test_kill_9_then_resume_finishes_like_an_uninterrupted_run(folder: Path, tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli(*cli_args(folder, tmp_path, straight, 3)).wait(timeout=300) == 0
    proc = cli(*cli_args(folder, tmp_path, killed, 3))
    wait_for(lambda: len(epoch_rows(killed)) >= 1
             and any(r.kind == "step" and r.epoch == 2 for r in RunFolder(killed).read_metrics()))
    proc.kill()
    proc.wait()
    resumed = cli("train", "--resume", str(killed), "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert [r.epoch for r in epoch_rows(killed)] == [1, 2, 3]
    a = checkpoint.read(straight / "last.pt")["state_dict"]
    b = checkpoint.read(killed / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_processes_gloo(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    args = cli_args(folder, tmp_path, run, 1)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mobilenet", *args],
        capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [line for line in result.stdout.splitlines() if '"kind": "report"' in line]
    assert len(reports) == 1 and json.loads(reports[0])["n"] == 24  # rank 0 alone says how it ended
    assert "no validation" not in result.stderr  # (rank 1, which did not validate, would have said so)
    rows = epoch_rows(run)
    assert len(rows) == 1  # one writer, no duplicated rows
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    checkpoint.load(run / "best.pt")


DDP_RUN = """
import json, sys
from pathlib import Path
from mobilenet import train
from mobilenet.config import TrainConfig
cfg, out, stop_at = TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3])
if stop_at:  # every rank agrees to stop after its step stop_at, as on a SIGTERM
    train._stop_agreed = lambda stop, world, device, step: step == stop_at
train.train(cfg, out, resume=Path(out, "last.pt").exists())
"""


def test_several_processes_agree_on_a_stop_only_every_few_steps() -> None:
    """Agreeing waits for the device's queued work: at every step it would stall a GPU's pipeline."""
    import torch.distributed as dist

    stop, cpu = train.StopRequest(), torch.device("cpu")
    stop.requested = True
    every = train.STOP_AGREED_EVERY
    assert not any(train._stop_agreed(stop, 2, cpu, step) for step in range(1, every))  # no group asked
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert train._stop_agreed(stop, 2, cpu, every)
        stop.requested = False
        assert not train._stop_agreed(stop, 2, cpu, 2 * every)
    finally:
        dist.destroy_process_group()
    stop.requested = True
    assert train._stop_agreed(stop, 1, cpu, 5)  # one process stops at the step it got the signal


def test_two_processes_stopped_mid_epoch_resume_with_the_epochs_whole_sums(folder: Path, tmp_path: Path) -> None:
    """Each rank counts its own images' loss and hits until the epoch ends: a stop used to save rank 0's alone,
    and every rank resumed with them, so the epoch's loss and accuracy (and a plateau schedule) came out wrong."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN)
    cfg = json.dumps(config(folder, tmp_path, epochs=1, batch_size=8).anchored().to_dict())

    def torchrun(out: Path, stop_at: int) -> None:
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script), cfg, str(out), str(stop_at)], capture_output=True, text=True,
                              timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()})
        assert done.returncode == 0, done.stderr[-2000:]

    torchrun(tmp_path / "whole", 0)
    torchrun(tmp_path / "stopped", 2)
    assert RunFolder(tmp_path / "stopped").read_status().state is RunState.STOPPED
    torchrun(tmp_path / "stopped", 0)
    whole, resumed = epoch_rows(tmp_path / "whole")[0], epoch_rows(tmp_path / "stopped")[0]
    assert resumed.train_acc == whole.train_acc and resumed.train_loss == pytest.approx(whole.train_loss, rel=1e-6)


def test_evaluate_cli_on_a_generated_folder(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train.train(config(folder, tmp_path, epochs=2), run)
    done = run_cli("evaluate", "--checkpoint", str(run), "--data", str(folder), "--json",
                   "--data-root", str(tmp_path / "root"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert 0 <= result["accuracy"] <= 1 and result["n"] == 120
    assert set(result["per_class"]) == {"cat", "dog", "ship"}
    assert sum(map(sum, result["confusion"])) == 120
    done = run_cli("evaluate", "--checkpoint", str(run), "--data", str(folder), "--split", "val", "--json",
                   "--data-root", str(tmp_path / "root"))
    assert json.loads(done.stdout)["n"] == 24


def test_evaluate_refuses_unknown_classes(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train.train(config(folder, tmp_path, epochs=1), run)
    other = write_folder(tmp_path / "other", per_class=2, splits=("test",))
    (other / "test" / "ship").rename(other / "test" / "plane")
    refused = run_cli("evaluate", "--checkpoint", str(run), "--data", str(other), "--data-root", str(tmp_path / "root"))
    assert refused.returncode == 2 and "plane" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("args,message", [
    (["--data", "/nonexistent/folder"], "not found"),
    (["--epochs", "0"], "epochs"),
    (["--alpha", "-1"], "alpha"),
    (["--resume", "/nonexistent/run"], "not a run folder"),
])
def test_bad_arguments_are_messages(args, message, tmp_path: Path) -> None:
    refused = run_cli("train", "--device", "cpu", "--data-root", str(tmp_path), *args)
    assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr


@pytest.fixture(scope="module")
def finished(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run, for copies to resume in ways that must be refused."""
    base = tmp_path_factory.mktemp("finished")
    train.train(config(folder, base, epochs=2), base / "run")
    return base / "run"


def copied(run: Path, tmp_path: Path, change=None) -> RunFolder:
    shutil.copytree(run, tmp_path / "copy")
    copy = RunFolder(tmp_path / "copy")
    if change:
        change(copy)
    return copy


def edited_config(**settings):
    return lambda run: run.write_config(replace(run.read_config(), **settings))


@pytest.mark.parametrize("change,message", [
    (lambda run: shutil.copy(run.best, run.last), "holds a model but no training state to resume from"),
    (edited_config(alpha=0.5), "config.json no longer describes the run last.pt holds: alpha 0.25 when it started, "
                               "0.5 now. Put those settings back, or start a new run"),
    (edited_config(ema=0.999), "ema 0.0 when it started, 0.999 now"),
    (edited_config(lr=0.2, epochs=5), "epochs 2 when it started, 5 now; lr 0.05 when it started, 0.2 now"),
])
def test_a_resume_refuses_a_state_or_config_that_is_not_the_runs_in_words(finished: Path, tmp_path: Path, change,
                                                                          message: str) -> None:
    run = copied(finished, tmp_path, change)
    refused = run_cli("train", "--resume", str(run.path))
    assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("args,message", [
    (["--data", "/nonexistent/folder"], "not found"),  # changes nothing: the run stays finished
    (["--config", "other.json"], "--resume goes on in the run's own folder with its own settings: --config cannot"),
    (["--out", "elsewhere", "--overwrite"], "--out, --overwrite cannot apply"),
])
def test_a_refused_resume_of_a_finished_run_leaves_it_finished(finished: Path, tmp_path: Path, args: list[str],
                                                              message: str) -> None:
    run = copied(finished, tmp_path)
    refused = run_cli("train", "--resume", str(run.path), *args)
    assert refused.returncode == 2 and message in refused.stderr
    assert run.read_status().state is RunState.FINISHED and not (tmp_path / "elsewhere").exists()


def test_overwriting_keeps_the_old_run_until_the_new_ones_data_and_teachers_are_there(finished: Path,
                                                                                      folder: Path,
                                                                                      tmp_path: Path) -> None:
    """A typo in the new run's settings must not cost the run it would replace."""
    run = copied(finished, tmp_path)
    run.set_status(RunState.STOPPED, 2, 2)  # a run that could go on
    int8 = run.path / "best.int8.onnx"
    int8.write_bytes(b"made from the old best.pt")
    kept = {path.name: path.read_bytes() for path in (run.best, run.last, run.report, run.metrics, int8)}
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        train.train(config(folder, tmp_path, epochs=1, teacher=str(tmp_path / "no-such-teacher.pt")), run.path,
                    overwrite=True)
    assert {name: (run.path / name).read_bytes() for name in kept} == kept
    assert run.read_status().state is RunState.STOPPED and run.read_status().error is None
    train.train(config(folder, tmp_path, epochs=1), run.path, overwrite=True)
    assert not int8.exists() and run.read_report().epochs == 1  # no int8 model of other weights left beside it


def test_a_damaged_zip_is_a_message(tmp_path: Path) -> None:
    images = write_folder(tmp_path / "images", per_class=2, splits=("train",))
    damaged = zip_folder(images, tmp_path / "damaged.zip").read_bytes()
    at = damaged.rindex(b"PK\x01\x02")  # the last entry of its central directory, its end record intact
    (tmp_path / "damaged.zip").write_bytes(damaged[:at] + b"XXXX" + damaged[at + 4:])
    refused = run_cli("train", "--data", str(tmp_path / "damaged.zip"), "--device", "cpu", "--data-root",
                      str(tmp_path / "root"), "--out", str(tmp_path / "run"))
    assert refused.returncode == 2 and "damaged.zip is a damaged .zip file" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_run_without_out_goes_to_the_runs_folder_the_app_lists(folder: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    args = [a for a in cli_args(folder, tmp_path, tmp_path / "unused", epochs=1) if a not in ("--out", str(
        tmp_path / "unused"))]
    monkeypatch.setenv("MOBILENET_RUNS", str(tmp_path / "served-runs"))
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-500:]
    [run] = (tmp_path / "served-runs").iterdir()
    assert run.name.endswith("-a0.25-fast") and (run / "best.pt").is_file()
    assert not (tmp_path / "unused").exists()


def test_before_its_first_validation_a_run_guesses_its_length_from_the_training_pace(folder: Path,
                                                                                    tmp_path: Path) -> None:
    cfg = config(folder, tmp_path, batch_size=128, tta="flip-translate")
    training = train.Training(cfg, RunFolder(tmp_path / "run"), torch.device("cpu"), 0, 1, None, None)
    training.val_set = ImageSet(torch.zeros(5000, 3, 1, 1, dtype=torch.uint8), torch.zeros(5000, dtype=torch.long),
                                ("cat",))
    # α=1 on the 2-core CPU: 170 training images a second; its 30,000 views then took 45 s
    assert training._validation_guess(step_s=128 / 170) == pytest.approx(45, rel=0.1)


@pytest.mark.parametrize("change", ["an image removed", "a class added"])
def test_a_run_resumes_only_on_the_images_it_trained_on(folder: Path, tmp_path: Path, change: str) -> None:
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    run, cfg = RunFolder(tmp_path / "run"), config(images, tmp_path, epochs=3)
    train.train(cfg, run.path, on_step=lambda row: row.epoch == 2 and os.kill(os.getpid(), signal.SIGTERM))
    saved = run.read_status().epoch
    if change == "an image removed":
        next((images / "train" / "cat").iterdir()).unlink()
    else:
        shutil.copytree(images / "train" / "cat", images / "train" / "cow")
    with pytest.raises(train.TrainError, match="since this run started; resuming would mix held-out and training"):
        train.train(cfg, run.path, resume=True)
    assert run.read_status().epoch == saved and run.resumable  # the saved state stays for when the data is back


def test_files_beside_the_images_do_not_stop_a_resume(folder: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    run, cfg = RunFolder(tmp_path / "run"), config(images, tmp_path, epochs=2)
    train.train(cfg, run.path, on_step=lambda row: os.kill(os.getpid(), signal.SIGTERM))
    (images / ".DS_Store").write_bytes(b"finder")
    (images / "train" / "README.txt").write_text("where these came from")
    assert train.train(cfg, run.path, resume=True) is not None  # finished


def test_any_whole_seed_gives_its_own_streams_and_small_seeds_keep_theirs() -> None:
    first = torch.rand(4, generator=step_generator(20240101, 3, 7, torch.device("cpu")))  # a date: beyond 2**64
    assert not torch.equal(first, torch.rand(4, generator=step_generator(20240102, 3, 7, torch.device("cpu"))))
    kept = torch.Generator().manual_seed((5 * 1_000_003 + 3) * 1_000_003 + 7)  # the streams of the runs so far
    ours = step_generator(5, 3, 7, torch.device("cpu"))
    assert torch.equal(torch.rand(4, generator=ours), torch.rand(4, generator=kept))
    assert torch.equal(torch.randperm(9, generator=train.order_generator(10**30, 2)),
                       torch.randperm(9, generator=train.order_generator(10**30, 2)))


def test_a_failed_resume_leaves_the_status_of_a_run_another_process_is_writing(folder: Path, tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    train.train(config(folder, tmp_path, epochs=2), run.path, on_step=lambda row: os.kill(os.getpid(), signal.SIGTERM))
    moved = config(tmp_path / "moved", tmp_path, epochs=2)
    (run.config).write_text(json.dumps(moved.to_dict()))  # its data no longer where it was
    before = run.status.read_text()
    with run.writing():  # as a live trainer holds it
        with pytest.raises(DataError, match="moved"):
            train.train(moved, run.path, resume=True)
        assert run.status.read_text() == before
    with pytest.raises(DataError, match="moved"):  # with nobody writing it, the run says it failed
        train.train(moved, run.path, resume=True)
    assert run.read_status().state == RunState.FAILED and run.read_status().epoch == json.loads(before)["epoch"]


def test_a_one_image_batch_with_a_one_pixel_last_feature_map_is_refused_in_words(folder: Path,
                                                                                tmp_path: Path) -> None:
    with pytest.raises(train.TrainError, match="at least 2 images"):
        train.train(config(folder, tmp_path, batch_size=1, beta=0.25), tmp_path / "run")


@pytest.mark.parametrize("val_size", [24, 0])
def test_a_diverged_run_fails_in_words_and_saves_nothing_of_the_bad_epoch(folder: Path, tmp_path: Path,
                                                                          val_size: int) -> None:
    """At lr 50 the loss stays finite (batch statistics rescale it) while the model's answers become NaN: such a
    run used to finish, and ship a model that answers NaN, with or without a validation split."""
    run = RunFolder(tmp_path / "run")
    with pytest.raises(train.TrainError, match="diverged in epoch 1: .* lower learning rate \\(--lr 50 now\\)"):
        train.train(config(folder, tmp_path, lr=50.0, val_size=val_size), run.path)
    assert run.read_status().state is RunState.FAILED and "diverged" in run.read_status().error
    assert not run.best.exists() and not run.last.exists() and not run.report.exists()


def test_a_stop_while_the_finished_run_saves_its_results_lets_it_finish(folder: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A Stop clicked at "2/2 epochs, ETA 0:00" used to kill the run as it saved its report: left interrupted."""
    finish = train.Training.finish

    def stopped_meanwhile(self) -> dict:
        os.kill(os.getpid(), signal.SIGINT)
        return finish(self)

    monkeypatch.setattr(train.Training, "finish", stopped_meanwhile)
    report = train.train(config(folder, tmp_path, epochs=1), tmp_path / "run")
    assert report is not None and RunFolder(tmp_path / "run").read_status().state is RunState.FINISHED


def test_one_class_is_no_classifier(tmp_path: Path) -> None:
    images = write_folder(tmp_path / "images", per_class=10, splits=("",))
    for other in ("dog", "ship"):
        shutil.rmtree(images / other)
    with pytest.raises(train.TrainError, match="holds one class \\(cat\\)"):
        train.train(config(images, tmp_path), tmp_path / "run")


def test_a_class_left_without_training_images_is_refused_in_words(tmp_path: Path) -> None:
    """A class folder of unreadable files only, or a subset too small to reach every class, trained a model on
    classes it never saw."""
    images = write_folder(tmp_path / "images", per_class=10, splits=("",))
    for path in (images / "dog").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(train.TrainError, match="no training images of dog once the validation split is held out"):
        train.train(config(images, tmp_path), tmp_path / "run")
    with pytest.raises(train.TrainError, match="no training images of dog, ship"):
        train.train(config(write_folder(tmp_path / "good", per_class=10), tmp_path, subset=1, val_size=0),
                    tmp_path / "subset")


def test_a_run_resumed_at_an_epochs_end_logs_the_pace_it_had(folder: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run, cfg = tmp_path / "run", config(folder, tmp_path, epochs=3)
    stop_agreed = train._stop_agreed

    def stop_on_the_last_step_of_epoch_two(stop, world, device, step) -> bool:
        return step == 12 or stop_agreed(stop, world, device, step)  # 6 steps an epoch

    monkeypatch.setattr(train, "_stop_agreed", stop_on_the_last_step_of_epoch_two)
    assert train.train(cfg, run) is None  # stopped
    monkeypatch.setattr(train, "_stop_agreed", stop_agreed)
    train.train(cfg, run, resume=True)
    second = next(r for r in epoch_rows(run) if r.epoch == 2)
    assert second.img_per_s > 0 and second.eta_s > 0
