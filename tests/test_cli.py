from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CLASSES, run_cli, save_model, write_folder, zip_folder

from mobilenet import checkpoint, data, evalsets
from mobilenet.__main__ import main
from mobilenet.checkpoint import TrainingData


def test_summary_table_from_python_m_mobilenet() -> None:
    result = subprocess.run([sys.executable, "-m", "mobilenet", "summary"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    assert "3,217,226" in result.stdout and "45,164,106" in result.stdout


def test_summary_json() -> None:
    result = run_cli("summary", "--alpha", "0.5", "--resolution", "160", "--stem", "imagenet", "--num-classes", "1000",
                     "--json")
    out = json.loads(result.stdout)
    assert out["input_size"] == [3, 160, 160]
    assert out["params"] == sum(row["params"] for row in out["layers"])
    assert out["mult_adds"] == sum(row["mult_adds"] for row in out["layers"])
    columns = {"name", "type", "kernel", "stride", "groups", "input_shape", "output_shape", "params", "mult_adds"}
    assert columns <= set(out["layers"][0])


@pytest.mark.parametrize("args,message", [(["--alpha", "0"], "alpha"),
                                          (["--resolution", "2"], "smallest that works is 3"),
                                          (["--beta", "-1"], "beta")])
def test_summary_bad_values_are_messages_not_tracebacks(args, message) -> None:
    result = run_cli("summary", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_beta_and_resolution_are_exclusive() -> None:
    result = run_cli("summary", "--beta", "1", "--resolution", "32")
    assert result.returncode == 2 and "not allowed with" in result.stderr


def test_the_imagenet_stem_counts_the_papers_1000_classes() -> None:
    out = json.loads(run_cli("summary", "--stem", "imagenet", "--json").stdout)
    assert out["num_classes"] == 1000 and out["params"] == 4_231_976  # the paper's 4.2 M


def test_a_one_channel_network_still_names_its_depthwise_layers() -> None:
    out = json.loads(run_cli("summary", "--alpha", "0.001", "--json").stdout)
    types = [row["type"] for row in out["layers"]][1:27]
    assert types == ["depthwise", "pointwise"] * 13


def test_every_option_has_help_and_there_is_a_version() -> None:
    from mobilenet import __version__
    from mobilenet.__main__ import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in [("", parser), *commands.items()]:
        missing = [a.dest for a in command._actions if not a.help]
        assert missing == [], f"{name or 'python -m mobilenet'}: no help for {missing}"
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"python -m mobilenet {__version__}"


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path]:
    """A model and the folder of train/ images only that it was trained on (recorded by fingerprint)."""
    folder = write_folder(tmp_path / "shapes", per_class=5, splits=("train",))
    model = tmp_path / "model.pt"
    save_model(model, classes=CLASSES, data=TrainingData("shapes", data.fingerprint(str(folder)), val_size=3))
    return model, folder


def test_evaluate_takes_a_folder_with_only_train_as_the_app_does(trained: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    model, folder = trained
    other = write_folder(tmp_path / "other", per_class=2, splits=("train",))
    assert main(["evaluate", "--checkpoint", str(model), "--data", str(other), "--json", "--no-download"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 6 and "note" not in err
    assert "evaluating on other: all images with PyTorch, fp32" in err  # a model without an int8 file beside it
    card = checkpoint.load(model)[1]
    assert evalsets.named(card, str(other), "test") in evalsets.sources(card, tmp_path)  # one rule for both

    assert main(["evaluate", "--checkpoint", str(model), "--data", str(folder), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 15 and f"all images ({evalsets.SEEN_NOTE})" in err and "--split val" in err
    assert main(["evaluate", "--checkpoint", str(model), "--data", str(folder), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3
    assert main(["evaluate", "--checkpoint", str(model), "--data", str(other), "--split", "val"]) == 2
    assert "other is not the data this model was trained on (shapes)" in capsys.readouterr().err


def test_evaluate_on_data_that_is_not_there_says_so(trained: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--checkpoint", str(trained[0]), "--data", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_evaluate_on_a_folder_without_images_is_a_message(trained: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--checkpoint", str(trained[0]), "--data", str(tmp_path / "empty")]) == 2
    assert "holds no images" in capsys.readouterr().err


def test_train_starts_from_the_config_file_it_is_given(tmp_path: Path) -> None:
    mine = tmp_path / "settings" / "my.json"
    mine.parent.mkdir()
    mine.write_text(json.dumps({"data": str(tmp_path / "nowhere"), "alpha": 0.25}))
    result = run_cli("train", "--config", str(mine), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "nowhere" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "settings" / "my.json").write_text("{not json")
    result = run_cli("train", "--config", str(mine), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and f"{mine}:" in result.stderr


@pytest.mark.parametrize("values,words", [
    ({"device": 5}, "device must be text, got 5"), ({"seed": "x"}, "seed must be a whole number"),
    ({"teacher": 5}, "teacher must be text"), ({"tta": "bogus"}, "tta must be one of none, flip, flip-translate"),
    ({"val_size": 2.5}, "val-size must be a whole number"), ({"compile": 1}, "compile must be true or false"),
    ({"lr": True}, "lr must be a number"), ({"data_root": 5}, "data-root must be text"),
    ({"cutout": 32}, "cutout must be 0 or more and below the input side, 32, got 32"),  # it would erase every image
    ({"teacher": " , "}, "teacher names no checkpoint"),
])
def test_a_hand_edited_config_is_refused_in_words(tmp_path: Path, values: dict, words: str) -> None:
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps(values))
    result = run_cli("train", "--config", str(bad))
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr


def test_a_run_records_where_its_data_is_so_that_it_resumes_from_anywhere(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "images", per_class=10)
    result = run_cli("train", "--data", "images", "--out", "run", "--alpha", "0.25", "--epochs", "1", "--batch-size",
                     "16", "--val-size", "6", "--device", "cpu", "--data-root", "root")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["data"], config["data_root"]) == (str(tmp_path / "images"), str(tmp_path / "root"))

    out = tmp_path / "shipped"
    out.mkdir()
    for target, words in ((out, "is a folder"), (tmp_path / "nowhere" / "m.pt", "no such folder")):
        result = run_cli("export", "run", str(target))
        assert result.returncode == 2 and words in result.stderr and ".tmp" not in result.stderr, result.stderr
    assert list(out.iterdir()) == []


def test_distill_without_a_teacher_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tmp_path), "--distill", "0.3", "--out", str(tmp_path / "run")]) == 2
    assert "give --teacher too" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_evaluate_on_a_damaged_zip_or_a_file_says_what_it_is(trained: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    whole = zip_folder(trained[1], tmp_path / "whole.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "photo.png").write_bytes(b"\x89PNG not a zip")
    for source in ("cut.zip", "photo.png"):
        assert main(["evaluate", "--checkpoint", str(trained[0]), "--data", str(tmp_path / source)]) == 2
        err = capsys.readouterr().err
        assert "neither a folder nor a .zip file" in err and "holds no images" not in err


def test_a_run_with_too_few_images_to_hold_any_out_is_not_exported_as_validated(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", per_class=1)  # 3 images: a fifth of them is none
    run = tmp_path / "run"
    assert run_cli("train", "--data", str(tmp_path / "images"), "--out", str(run), "--alpha", "0.25", "--epochs",
                   "1", "--batch-size", "2", "--device", "cpu", "--data-root", str(tmp_path / "root")).returncode == 0
    result = run_cli("export", str(run), str(tmp_path / "m.pt"))
    assert result.returncode == 2 and "held out no images" in result.stderr and "Traceback" not in result.stderr


def test_a_run_with_a_malformed_report_is_not_exported(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", per_class=10)
    run = tmp_path / "run"
    assert run_cli("train", "--data", str(tmp_path / "images"), "--out", str(run), "--alpha", "0.25", "--epochs",
                   "1", "--batch-size", "16", "--val-size", "6", "--device", "cpu", "--data-root",
                   str(tmp_path / "root")).returncode == 0
    report = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "confusion"}))
    result = run_cli("export", str(run), str(tmp_path / "m.pt"))
    assert result.returncode == 2 and "cannot measure run: run/report.json: malformed validation" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("device", ["cuda:x", "cuda:", "gpu"])
def test_a_device_that_is_no_device_is_refused_in_words(tmp_path: Path, device: str) -> None:
    result = run_cli("train", "--data", str(tmp_path), "--device", device, "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "device must be auto, cpu, cuda or cuda:N" in result.stderr


def test_export_leaves_another_projects_readme_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILENET_CHECKPOINTS", str(tmp_path / "checkpoints"))
    write_folder(tmp_path / "images", per_class=10)
    assert run_cli("train", "--data", str(tmp_path / "images"), "--out", str(tmp_path / "run"), "--alpha", "0.25",
                   "--epochs", "1", "--batch-size", "16", "--val-size", "6", "--device", "cpu", "--data-root",
                   str(tmp_path / "root")).returncode == 0
    theirs = tmp_path / "project"
    theirs.mkdir()
    (theirs / "README.md").write_text("# My own project\n")
    result = run_cli("export", str(tmp_path / "run"), str(theirs / "m.pt"))
    assert result.returncode == 0 and "left as it is" in result.stderr
    assert (theirs / "README.md").read_text() == "# My own project\n"
    ours = tmp_path / "checkpoints"  # the folder the app serves: its README gets the cards
    ours.mkdir()
    assert run_cli("export", str(tmp_path / "run"), str(ours / "m.pt")).returncode == 0
    assert "### `m.pt`" in (ours / "README.md").read_text()

    (theirs / "notes.png").write_bytes(b"a file of theirs")  # a slip of the hand: not a model's name
    refused = run_cli("export", str(tmp_path / "run"), str(theirs / "notes.png"))
    assert refused.returncode == 2 and "notes.png: is there already; give --overwrite to replace it" in refused.stderr
    assert (theirs / "notes.png").read_bytes() == b"a file of theirs"
    assert run_cli("export", str(tmp_path / "run"), str(ours / "m.pt"), "--overwrite").returncode == 0


def test_ctrl_c_while_torch_loads_is_a_quiet_exit(tmp_path: Path) -> None:
    """Loading torch takes most of a predict's seconds: Ctrl-C then printed a 20-line traceback."""
    import os
    import signal
    import time

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "mobilenet", "predict", str(tmp_path / "photo.png")], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def loading_torch() -> bool:
        try:
            return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:  # it ended meanwhile
            return False

    deadline = time.monotonic() + 60
    while proc.poll() is None and not loading_torch() and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
