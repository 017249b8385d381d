"""The "not sure" answer: each shipped model's calibrated threshold, on CIFAR-10 images and foreign ones."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFilter

from mobilenet import Classifier, checkpoint, ood

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "checkpoints").glob("mobilenet_v1_a*.pt"))
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.jpg"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_model_has_a_threshold_that_keeps_cifar_images(path: Path) -> None:
    limit = ood.threshold(path)
    assert limit is not None and 0.1 < limit < 1
    clf = Classifier.load(path, device="cpu", threads=None)
    kept = [not ood.looks_foreign(clf.predict(p).prob, limit) for p in EXAMPLES]
    assert sum(kept) >= 0.8 * len(kept)  # calibrated to keep 95% of validation images


def test_the_default_model_is_not_sure_about_most_flat_and_smooth_images() -> None:
    path = ROOT / "checkpoints" / "mobilenet_v1_a1.0.pt"
    clf, limit = Classifier.load(path, device="cpu", threads=None), ood.threshold(path)
    blurred = Image.effect_noise((96, 96), 80).convert("RGB").filter(ImageFilter.GaussianBlur(4))
    for image in (Image.new("RGB", (96, 96), (128, 128, 128)), blurred):
        assert ood.looks_foreign(clf.predict(image).prob, limit)
    # Not every flat colour: a plain blue or white may be sky, and the model says "bird" or "airplane" (BENCHMARKS,
    # "Out-of-distribution": about two thirds of flat colours are flagged).
    colours = ((0, 0, 0), (255, 255, 255), (100, 100, 100), (20, 60, 200), (200, 30, 30), (30, 160, 40),
               (240, 220, 60), (128, 128, 128))
    flagged = [ood.looks_foreign(clf.predict(Image.new("RGB", (96, 96), c)).prob, limit) for c in colours]
    assert sum(flagged) >= len(colours) // 2


def test_a_threshold_belongs_to_its_exact_file(tmp_path: Path) -> None:
    source = SHIPPED[0]
    copy = tmp_path / source.name
    shutil.copy(source, copy)
    assert ood.threshold(copy) is None  # no ood.json beside it
    shutil.copy(source.parent / ood.CALIBRATION_FILE, tmp_path / ood.CALIBRATION_FILE)
    assert ood.threshold(copy) == ood.threshold(source)
    model, card = checkpoint.load(source)
    checkpoint.save(copy, model, replace(card, training={"note": "a card-only change"}))
    assert ood.threshold(copy) == ood.threshold(source)  # the same model answering the same way
    changed = tmp_path / "changed"
    changed.mkdir()
    with torch.no_grad():
        model.classifier.bias += 0.01
    checkpoint.save(changed / source.name, model, card)
    (changed / ood.CALIBRATION_FILE).write_text((tmp_path / ood.CALIBRATION_FILE).read_text())
    assert ood.threshold(changed / source.name) is None  # other weights than the calibrated ones
    checkpoint.save(changed / source.name, checkpoint.load(source)[0], replace(card, tta="none"))
    assert ood.threshold(changed / source.name) is None  # fed without the calibrated test-time augmentation
    (changed / ood.CALIBRATION_FILE).write_text(json.dumps({"broken": True}))
    assert ood.threshold(copy) is not None and ood.threshold(changed / source.name) is None
