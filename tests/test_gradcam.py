"""Class activation maps on the shipped models and real photos: every prediction gets a map that points somewhere."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_model
from PIL import Image

from mobilenet import Classifier, infer
from mobilenet.checkpoint import load as load_checkpoint
from mobilenet.gradcam import class_maps, target_block

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "checkpoints").glob("mobilenet_v1_a*.pt"))
EXAMPLES = sorted((ROOT / "checkpoints" / "examples").glob("*.jpg")) + \
    sorted((ROOT / "assets" / "examples").glob("*.jpg"))
CAT = ROOT / "tests" / "data" / "photos" / "cat.png"  # a 451×300 tabby: blank for α=1 under the first Grad-CAM


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def cat_variants() -> dict[str, bytes]:
    """The issue's variants of the photo: original, grayscale, 16-bit, WebP, GIF and a 6000×4500 copy."""
    photo = Image.open(CAT).convert("RGB")
    gray = photo.convert("L")
    return {
        "png": CAT.read_bytes(),
        "grayscale": encoded(gray, "PNG"),
        "16-bit": encoded(Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), "PNG"),
        "webp": encoded(photo, "WEBP"),
        "gif": encoded(photo.convert("P"), "GIF"),
        "6000x4500": encoded(photo.resize((6000, 4500)), "JPEG"),
    }


@pytest.fixture(scope="module", params=SHIPPED, ids=[p.stem for p in SHIPPED])
def clf(request: pytest.FixtureRequest) -> Classifier:
    return Classifier.load(request.param, device="cpu", threads=None)


def test_the_map_sits_on_the_last_map_of_at_least_8x8() -> None:
    assert target_block("cifar", 32) == 4  # 8×8, where the 4×4 blocks after it left maps blank
    assert target_block("imagenet", 224) == 10  # 14×14
    assert target_block("cifar", 64) == 10  # 8×8


def test_a_real_cat_photo_gets_a_map_in_every_variant(clf: Classifier) -> None:
    for name, blob in cat_variants().items():
        prediction = clf.predict(blob)
        assert prediction.label == "cat", name
        cam, _ = clf.gradcam(blob, clf.classes.index("cat"))
        assert cam.shape == (32, 32) and float(cam.max()) == pytest.approx(1.0), name
        assert float(cam.min()) >= 0 and float((cam > 0.5).float().mean()) < 0.5, name  # it points somewhere


def test_every_example_gets_a_map_for_its_prediction(clf: Classifier) -> None:
    blank = []
    for path in EXAMPLES:
        cam, chosen = clf.gradcam(path)
        assert chosen == clf.classes.index(clf.predict(path).label)
        if not float(cam.max()) > 0:
            blank.append(path.name)
    assert not blank


def test_maps_differ_between_classes(clf: Classifier) -> None:
    maps = torch.stack([clf.gradcam(CAT, i)[0] for i in range(len(clf.classes))])
    distinct = {tuple(m.flatten().round(decimals=3).tolist()) for m in maps}
    assert len(distinct) == len(clf.classes)


def test_class_maps_of_a_batch_match_one_at_a_time() -> None:
    model = random_model()
    x, classes = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    batch = class_maps(model, x, classes, target_block("cifar", 32))
    assert batch.shape == (4, 32, 32)
    for i in range(4):
        torch.testing.assert_close(batch[i], class_maps(model, x[i:i + 1], classes[i:i + 1], 4)[0])


def test_the_folded_model_gives_the_maps_of_the_trained_one(clf: Classifier) -> None:
    model, _ = load_checkpoint(next(p for p in SHIPPED if p.stem == f"mobilenet_v1_a{clf.card.alpha}"))
    image = clf.prepare(CAT)
    x = clf.recipe.normalization.apply(image[None])
    for k in range(len(clf.classes)):
        unfolded = class_maps(model.eval(), x, torch.tensor([k]), target_block(clf.card.stem, clf.card.resolution))
        torch.testing.assert_close(clf.class_map(image, k), unfolded[0], atol=1e-5, rtol=0)


def test_kept_maps_are_bounded_by_their_bytes(clf: Classifier, monkeypatch: pytest.MonkeyPatch) -> None:
    computed = []
    real = infer.class_maps
    monkeypatch.setattr(infer, "class_maps", lambda *args: computed.append(int(args[2])) or real(*args))
    monkeypatch.setattr(infer, "CACHED_MAP_BYTES", 3 * 32 * 32 * 4)  # three 32×32 float maps
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    for k in (0, 1, 2, 3, 0, 3, 2):
        clf.class_map(image, k)
    assert computed == [0, 1, 2, 3, 0]  # 0 was the oldest when 3 came; 3 and 2 were still kept
