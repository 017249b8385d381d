"""python -m mobilenet predict: exit codes, the --json schema, URLs, and messages instead of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
from helpers import image_bytes, png, save_random_checkpoint, send, Server

from mobilenet import settings
from mobilenet.__main__ import main
from mobilenet.data import CIFAR10_CLASSES


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    threads = torch.get_num_threads()
    yield str(save_random_checkpoint(tmp_path_factory.mktemp("model") / "model.pt"))
    torch.set_num_threads(threads)  # predict's Classifier.load sets it for the process


@pytest.fixture
def photos(tmp_path: Path) -> list[str]:
    paths = [tmp_path / "a.jpg", tmp_path / "b.png"]
    for seed, path in enumerate(paths):
        path.write_bytes(image_bytes(seed, (120, 90), path.suffix[1:].upper().replace("JPG", "JPEG")))
    return [str(p) for p in paths]


def predict_json(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[dict]]:
    code = main(["predict", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_json_for_good_inputs(model: str, photos: list[str], capsys: pytest.CaptureFixture) -> None:
    code, results = predict_json(capsys, "--checkpoint", model, "--topk", "3", *photos)
    assert code == 0
    assert [r["source"] for r in results] == photos
    for result in results:
        assert set(result) == {"source", "top", "ms"} and result["ms"] > 0
        assert len(result["top"]) == 3 and all(set(row) == {"label", "prob"} for row in result["top"])
        assert all(row["label"] in CIFAR10_CLASSES and 0 < row["prob"] < 1 for row in result["top"])


def test_any_failure_exits_1_with_an_error_object(model: str, photos: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ALLOW_PRIVATE_URLS_ENV, raising=False)
    (tmp_path / "notes.txt").write_text("hello")
    inputs = [photos[0], str(tmp_path / "notes.txt"), str(tmp_path / "missing.png"), "http://127.0.0.1:9/x.png",
              "file:///etc/passwd"]
    code, results = predict_json(capsys, "--checkpoint", model, *inputs)
    assert code == 1
    assert [r["source"] for r in results] == inputs
    assert set(results[0]) == {"source", "top", "ms"}
    assert all(set(r) == {"source", "error"} for r in results[1:])
    assert "not a supported image" in results[1]["error"] and "cannot read" in results[2]["error"]
    assert "not a public internet address" in results[3]["error"] and "http" in results[4]["error"]


def test_a_url_from_a_trusted_local_install(model: str, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(routes={"/cat.png": lambda h: send(h, 200, image_bytes(3))})
    try:
        monkeypatch.setenv(settings.ALLOW_PRIVATE_URLS_ENV, "1")
        code, results = predict_json(capsys, "--checkpoint", model, server.url("/cat.png"))
    finally:
        server.close()
    assert code == 0 and len(results[0]["top"]) == 5


def test_text_output(model: str, photos: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", "--checkpoint", model, "--topk", "2", photos[1], "nothing.png"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith(f"{photos[1]}  (") and len(out.splitlines()) == 3
    assert err.startswith("error: nothing.png: cannot read")


def test_a_folder_is_its_images(model: str, photos: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "inner").mkdir()
    (tmp_path / "empty").mkdir()
    code, results = predict_json(capsys, "--checkpoint", model, str(tmp_path), str(tmp_path / "empty"))
    assert code == 1
    assert [r["source"] for r in results] == sorted(photos) + [str(tmp_path / "empty")]
    assert all("top" in r for r in results[:-1]) and results[-1]["error"].startswith("a folder without images")


def test_a_folder_that_is_not_a_run_says_so(photos: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "models").mkdir()
    save_random_checkpoint(tmp_path / "models" / "one.pt")
    assert main(["predict", "--checkpoint", str(tmp_path / "models"), photos[0]]) == 2
    err = capsys.readouterr().err
    assert "is a folder but not a training run" in err and f"e.g. {tmp_path / 'models' / 'one.pt'}" in err


def test_a_missing_model_or_bad_option_is_a_usage_error(photos: list[str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", "--checkpoint", str(tmp_path / "none.pt"), photos[0]]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--topk", "0", photos[0]])
    assert exit_info.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_hostile_inputs_never_give_a_traceback(model: str, tmp_path: Path) -> None:
    """One real process with every kind of bad input."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png(10_000, 10_000))  # 100 megapixels: also above PIL's own warning threshold
    (tmp_path / "page.html").write_text("<html><script>alert(1)</script></html>")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(image_bytes(1, (64, 64), "JPEG")[:300])
    (tmp_path / "no-images").mkdir()
    inputs = [str(bomb), str(tmp_path / "page.html"), str(tmp_path / "empty.jpg"), str(tmp_path / "cut.jpg"),
              str(tmp_path / "no-images"), "http://[::1]/", "http://2130706433/", "gopher://localhost/", "http://", "-"]
    result = subprocess.run([sys.executable, "-m", "mobilenet", "predict", "--checkpoint", model, "--", *inputs],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
                            env={k: v for k, v in os.environ.items() if k != settings.ALLOW_PRIVATE_URLS_ENV})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert result.stdout == "" and len(result.stderr.splitlines()) == len(inputs)
