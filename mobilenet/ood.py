"""An honest "not sure": does an image look like any of the classes a model knows?

The signal is the maximum softmax probability (Hendrycks & Gimpel 2017), the probability of the top class
that every prediction already shows: below a model's threshold, the answer is "this does not look like
any of the classes". A threshold belongs to one model as it answers: its weights (their digest) and its
test-time augmentation, not the rest of its card. bench/ood.py sets it to keep 95% of CIFAR-10 validation
images the model never trained on, measures how well it separates them from foreign images (AUROC in
BENCHMARKS.md) and writes it to ood.json beside the checkpoints. A model without one (a training run)
gets no verdict, only its probabilities.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from . import checkpoint
from .checkpoint import CheckpointError, ModelCard

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
