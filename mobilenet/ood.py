"""An honest "not sure": does an image look like any of the classes a model knows?

The signal is the maximum softmax probability (Hendrycks & Gimpel 2017), the probability of the top class
that every prediction already shows: below a model's threshold, the answer is "this does not look like
any of the classes". A threshold belongs to one model as it answers: its weights (their digest) and its
test-time augmentation, not the rest of its card. bench/ood.py sets it to keep 95% of CIFAR-10 validation
images the model never trained on, measures how well it separates them from foreign images (AUROC in
BENCHMARKS.md) and writes it to ood.json beside the checkpoints. A model without one (a training run)
gets no verdict, only its probabilities.

A model trained on all the images has no validation images, and on its own training images it is
over-confident: a threshold set there would call too many new images foreign (α=1: it keeps 87% of them,
not 95%; BENCHMARKS.md). Its validating twin (the
identical recipe with the split held out, mobilenet.shipping.Twin) answers in its place (`calibration`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from . import checkpoint
from .checkpoint import CheckpointError, ModelCard, TrainingData
from .runs import RunFolder

if TYPE_CHECKING:
    import torch

CALIBRATION_FILE = "ood.json"
KEEP = 0.95  # the share of in-distribution validation images a threshold accepts


def identity(path: Path) -> dict[str, str]:
    """What a threshold is calibrated for: the checkpoint's weights digest and its test-time augmentation."""
    payload = checkpoint.read(path)
    return {"weights": payload["digest"], "tta": ModelCard.from_dict(payload["card"]).tta}


@lru_cache(maxsize=16)
def _threshold(path: Path, versions: tuple[int, ...]) -> float | None:  # versions: part of the cache key only
    try:
        entry = json.loads((path.parent / CALIBRATION_FILE).read_text())[path.name]
        if not isinstance(entry, dict) or {k: entry.get(k) for k in ("weights", "tta")} != identity(path):
            return None  # calibrated for other weights, or another way of feeding them
        return float(entry["threshold"])
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return None


def threshold(path: Path) -> float | None:
    """The calibrated threshold of this checkpoint's model, or None when it has none."""
    table = path.parent / CALIBRATION_FILE
    try:
        stat = path.stat()
        return _threshold(path.resolve(), (stat.st_mtime_ns, stat.st_size, table.stat().st_mtime_ns))
    except OSError:
        return None


def looks_foreign(top_probability: float | torch.Tensor, limit: float) -> bool | torch.Tensor:
    """Whether a top-class probability (or a tensor of them) falls below the threshold."""
    return top_probability < limit


def calibrate(top_probabilities: torch.Tensor) -> float:
    """The threshold that keeps KEEP of these top-class probabilities of images a model never trained on."""
    return float(top_probabilities.quantile(1 - KEEP))


@dataclass(frozen=True)
class Calibration:
    """Whose answers on which held-out images set a shipped model's threshold."""

    path: Path  # the checkpoint that answers: the shipped model, or its validating twin's best.pt
    split: TrainingData | None  # the split whose validation images it answers (None: the card records none)
    twin: str | None = None  # the twin's run name, when the shipped model trained on all the images


def calibration(path: Path, twins: Sequence[Path] = ()) -> Calibration:
    """A shipped model's own validation split, or for one trained on all the images, its validating twin's model
    on the twin's split: the twin's run folder is looked up by name among `twins` (CheckpointError without it)."""
    from .shipping import Twin

    card = checkpoint.read_card(path)
    twin = Twin.of(card)
    if twin is None:
        return Calibration(path, card.data)
    folder = next((RunFolder(p) for p in twins if Path(p).name == twin.run), None)
    if folder is None:
        raise CheckpointError(f"{path.name} trained on all the images: its threshold comes from its validating "
                              f"twin's answers on the images the twin held out: give the twin's run folder, "
                              f"{twin.run}")
    proxy = checkpoint.read_card(folder.best)
    split = proxy.data
    fingerprints = {d.fingerprint for d in (split, card.data) if d and d.fingerprint}
    if split is None or len(fingerprints) > 1 or (split.val_size, split.seed) != (twin.val_size, twin.seed) \
            or proxy.tta != card.tta:
        raise CheckpointError(f"{folder.name} is not the validating twin {path.name} records (its data, split or "
                              f"test-time augmentation differ)")
    return Calibration(folder.best, split, twin.run)
