"""Classifier: predictions, batches, BN folding, preprocessing identical to training, sharing between threads."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import torch
from helpers import image_bytes, random_model, save_random_checkpoint
from PIL import Image
from torch import nn

from mobilenet import Classifier, ImageError, Prediction, checkpoint, data
from mobilenet.checkpoint import CheckpointError
from mobilenet.evaluate import predict_probs
from mobilenet.infer import fold_batchnorm
from mobilenet.tta import SEED_NORMALIZATION, InferenceRecipe


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def clf(checkpoint_file: Path) -> Iterator[Classifier]:
    threads = torch.get_num_threads()
    yield Classifier.load(checkpoint_file, device="cpu")
    torch.set_num_threads(threads)  # load sets it for the process: leave the other tests as they were


def test_predict_gives_top_k_the_image_seen_and_the_time(clf: Classifier) -> None:
    prediction = clf.predict(image_bytes(1, (640, 480), "JPEG"), topk=3)
    assert len(prediction.top) == 3
    assert len({label for label, _ in prediction.top} & set(clf.classes)) == 3
    probs = [p for _, p in prediction.top]
    assert probs == sorted(probs, reverse=True) and 0 < probs[-1] <= probs[0] < 1
    assert prediction.label == prediction.top[0][0] and prediction.prob == probs[0]
    assert prediction.image.size == (32, 32) and prediction.image.mode == "RGB"
    assert prediction.ms > 0
    everything = clf.predict(image_bytes(1, (640, 480), "JPEG"), topk=100).top
    assert len(everything) == 10 and sum(p for _, p in everything) == pytest.approx(1, abs=1e-5)
    assert torch.get_num_threads() == 1


def test_every_kind_of_source_gives_the_same_answer(clf: Classifier, tmp_path: Path) -> None:
    blob = image_bytes(2, (100, 60))
    path = tmp_path / "photo.png"
    path.write_bytes(blob)
    expected = clf.predict(blob).top
    for source in (path, str(path), io.BytesIO(blob), Image.open(io.BytesIO(blob))):
        assert clf.predict(source).top == expected


def test_predict_batch_matches_predict_and_keeps_errors_in_place(clf: Classifier) -> None:
    sources = [image_bytes(3), b"not an image", image_bytes(4, (20, 90), "JPEG"), b""]
    results = clf.predict_batch(sources, topk=10)
    assert [type(r) for r in results] == [Prediction, ImageError, Prediction, ImageError]
    for source, result in zip(sources, results):
        if isinstance(result, Prediction):
            single = dict(clf.predict(source, topk=10).top)
            assert all(p == pytest.approx(single[label], abs=1e-5) for label, p in result.top)
    assert clf.predict_batch([]) == []


def test_folded_model_computes_the_same_function() -> None:
    model = random_model()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert expected.std(0).mean() > 0.05  # outputs depend on the input, so the comparison means something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_preprocessing_and_outputs_match_training_and_evaluation(clf: Classifier, checkpoint_file: Path,
                                                                 tmp_path: Path) -> None:
    """Images of odd sizes and formats: the classifier sees exactly what the data module feeds training."""
    folder = tmp_path / "set" / "train" / "cat"
    folder.mkdir(parents=True)
    files = {"a.jpg": image_bytes(5, (75, 50), "JPEG"), "b.png": image_bytes(6, (32, 32)),
             "c.webp": image_bytes(7, (41, 300), "WEBP"), "d.bmp": image_bytes(8, (64, 64), "BMP")}
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    trained_on = data.load(str(tmp_path / "set"), "train", 32, root=tmp_path, cache=False).images
    seen = torch.stack([clf.prepare(blob) for blob in files.values()])
    assert seen.equal(trained_on)
    model, card = checkpoint.load(checkpoint_file)
    expected = predict_probs(model, trained_on, card.inference)
    assert clf.recipe.tta == "flip"
    torch.testing.assert_close(clf.probabilities(seen), expected, atol=1e-5, rtol=1e-4)


def test_sixteen_threads_share_one_classifier(clf: Classifier) -> None:
    images = [image_bytes(seed, (40 + seed, 40)) for seed in range(16)]
    serial = [clf.predict(image, topk=10).top for image in images]

    def worker(offset: int) -> list[bool]:
        return [clf.predict(images[(offset + i) % 16], topk=10).top == serial[(offset + i) % 16] for i in range(30)]

    with ThreadPoolExecutor(16) as pool:
        same = [ok for results in pool.map(worker, range(16)) for ok in results]
    assert len(same) == 480 and all(same)


def test_gradcam(clf: Classifier) -> None:
    cam, chosen = clf.gradcam(image_bytes(9))
    assert cam.shape == (32, 32) and 0 <= float(cam.min()) and float(cam.max()) <= 1
    assert chosen == clf.classes.index(clf.predict(image_bytes(9)).label)
    assert clf.gradcam(image_bytes(9), class_index=3)[1] == 3


def test_load_a_run_folder_and_a_missing_default(checkpoint_file: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(checkpoint_file.read_bytes())
    assert Classifier.load(run, device="cpu", threads=None).classes == data.CIFAR10_CLASSES
    (run / "best.pt").rename(run / "kept.pt")
    with pytest.raises(CheckpointError, match=f"not a training run with a best model .*e.g. {run / 'kept.pt'}"):
        Classifier.load(run, device="cpu", threads=None)
    monkeypatch.setenv("MOBILENET_CHECKPOINTS", str(tmp_path / "none"))
    with pytest.raises(CheckpointError, match="default model"):
        Classifier.load()


def test_evaluation_runs_in_fp32_as_the_classifier_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, bf16 autocast in validation scored another model than the one served: a card's accuracy would
    not be the served model's."""
    def no_autocast(*args, **kwargs):
        raise AssertionError("autocast in evaluation")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    probs = predict_probs(random_model(), torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
                          InferenceRecipe(SEED_NORMALIZATION, "flip"))
    assert probs.dtype == torch.float32 and probs.shape == (4, 10)
