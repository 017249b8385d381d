"""Distillation: the teachers' targets are computed once, saved with the run, resumed exactly, never leak validation."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mobilenet import checkpoint, distill, train
from mobilenet.config import TrainConfig
from mobilenet.data import load, split_train_val
from mobilenet.evaluate import predict_probs
from mobilenet.runs import RunFolder

from helpers import tiny_config, write_folder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "images", per_class=40)


@pytest.fixture(scope="module")
def teacher(folder: Path, tmp_path_factory) -> Path:
    """A teacher trained with the same validation split held out as the students below."""
    run = tmp_path_factory.mktemp("teacher")
    train.train(config(folder, run, epochs=2), run / "run")
    return run / "run" / "best.pt"


def config(folder: Path, tmp_path: Path, **overrides) -> TrainConfig:
    return tiny_config(folder, tmp_path / "root", **overrides)


def test_targets_are_the_teachers_averaged_predictions_and_resume_exactly(folder: Path, teacher: Path,
                                                                          tmp_path: Path) -> None:
    cfg = config(folder, tmp_path, teacher=f"{teacher},{teacher}", distill=0.7)
    train.train(cfg, tmp_path / "straight")

    def stop_in_epoch_two(row) -> None:
        if row.epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train.train(cfg, tmp_path / "resumed", on_step=stop_in_epoch_two) is None  # stopped
    train.train(cfg, tmp_path / "resumed", resume=True)
    straight, resumed = (checkpoint.read(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in straight["state_dict"])

    train_set, _ = split_train_val(load(str(folder), "train", 32, root=tmp_path / "root"), 24, 0)
    model, card = checkpoint.load(teacher)
    expected = predict_probs(model, train_set.images, card.inference)
    assert torch.allclose(resumed["train_state"]["targets"], expected, atol=1e-6)
    _, student = checkpoint.load(tmp_path / "resumed" / "best.pt")
    assert student.training["teachers"] == ["best.pt", "best.pt"] and student.training["distill"] == 0.7


def test_a_teachers_answers_are_kept_for_the_next_run_on_the_same_images(folder: Path, teacher: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    train_set, held_out = split_train_val(load(str(folder), "train", 32, root=tmp_path / "root"), 24, 0)
    card = checkpoint.load(teacher)[1]
    cache = tmp_path / "cache"
    first = distill.soft_targets([str(teacher)], train_set, card.data, cache=cache)
    assert len(list(cache.iterdir())) == 1
    runs = []
    monkeypatch.setattr(distill, "predict_probs", lambda *args: runs.append(args) or predict_probs(*args))
    assert torch.equal(distill.soft_targets([str(teacher), str(teacher)], train_set, card.data, cache=cache),
                       first) and not runs  # read, not computed, for each of the two
    distill.soft_targets([str(teacher)], held_out, None, cache=cache)  # other images: asked of the teacher
    assert len(runs) == 1 and len(list(cache.iterdir())) == 2
    for file in cache.iterdir():
        file.write_bytes(b"damaged")
    assert torch.equal(distill.soft_targets([str(teacher)], train_set, card.data, cache=cache), first)
    assert len(runs) == 2  # computed again, never trusted


def test_a_teacher_that_saw_the_validation_images_is_refused(folder: Path, tmp_path: Path) -> None:
    other_split = tmp_path / "other-split"
    train.train(config(folder, tmp_path, epochs=1, seed=1), other_split)
    with pytest.raises(ValueError, match="validation split"):
        train.train(config(folder, tmp_path, epochs=1, teacher=str(other_split / "best.pt")), tmp_path / "student")
    report = train.train(config(folder, tmp_path, epochs=1, val_size=0, teacher=str(other_split / "best.pt")),
                         tmp_path / "no-validation")
    assert report is not None and report.validation is None


def test_targets_enter_the_loss_with_their_weight(folder: Path, tmp_path: Path, monkeypatch) -> None:
    """Targets equal to the one-hot labels, at any weight, train exactly like the labels alone (no smoothing)."""
    monkeypatch.setattr(train, "soft_targets",
                        lambda teachers, train_set, held_out, cache: F.one_hot(train_set.labels, 3).float())
    plain = config(folder, tmp_path, epochs=1, label_smoothing=0.0)
    train.train(plain, tmp_path / "plain")
    train.train(config(folder, tmp_path, epochs=1, label_smoothing=0.0, teacher="labels", distill=0.5),
                tmp_path / "half")
    a, b = ([r.train_loss for r in RunFolder(tmp_path / run).read_metrics() if r.kind == "epoch"]
            for run in ("plain", "half"))
    assert a == pytest.approx(b, rel=1e-4)


def test_at_weight_one_the_targets_alone_teach(folder: Path, tmp_path: Path, monkeypatch) -> None:
    """Targets that name the next class teach the next class: validation on the true labels falls to almost none."""
    monkeypatch.setattr(train, "soft_targets",
                        lambda teachers, train_set, held_out, cache: F.one_hot((train_set.labels + 1) % 3, 3).float())
    report = train.train(config(folder, tmp_path, epochs=8, teacher="shifted", distill=1.0, val_size=0),
                         tmp_path / "shifted")
    held_out = config(folder, tmp_path)
    _, val_set = split_train_val(load(held_out.data, "train", 32, root=held_out.data_root), 24, 0)
    model, card = checkpoint.load(tmp_path / "shifted" / "best.pt")
    predicted = predict_probs(model, val_set.images, card.inference).argmax(1)
    assert report is not None
    assert (predicted == (val_set.labels + 1) % 3).float().mean() > 0.6  # chance: 1/3


@pytest.mark.parametrize("distill", [0.0, 1.5])
def test_distill_weight_is_checked(distill: float) -> None:
    with pytest.raises(ValueError, match="distill"):
        TrainConfig(distill=distill)
