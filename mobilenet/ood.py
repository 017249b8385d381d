"""An honest "not sure": does an image look like any of the classes a model knows?

The signal is the maximum softmax probability (Hendrycks & Gimpel 2017), the probability of the top class
that every prediction already shows: below a model's threshold, the answer is "this does not look like
any of the classes". A threshold belongs to one checkpoint file: bench/ood.py sets it to keep 95% of
CIFAR-10 validation images the model never trained on, measures how well it separates them from foreign
images (AUROC in BENCHMARKS.md) and writes it to ood.json beside the checkpoints, with the file's hash.
A model without one (a training run) gets no verdict, only its probabilities.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CALIBRATION_FILE = "ood.json"
KEEP = 0.95  # the share of in-distribution validation images a threshold accepts


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=16)
def _threshold(path: Path, versions: tuple[int, int]) -> float | None:  # versions: part of the cache key only
    try:
        entry = json.loads((path.parent / CALIBRATION_FILE).read_text())[path.name]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(entry, dict) or entry.get("sha256") != file_digest(path):
        return None  # calibrated on other weights than these
    return float(entry["threshold"])


def threshold(checkpoint: Path) -> float | None:
    """The calibrated threshold of this exact checkpoint file, or None when it has none."""
    table = checkpoint.parent / CALIBRATION_FILE
    try:
        return _threshold(checkpoint.resolve(), (checkpoint.stat().st_mtime_ns, table.stat().st_mtime_ns))
    except OSError:
        return None


def looks_foreign(top_probability: float | torch.Tensor, limit: float) -> bool | torch.Tensor:
    """Whether a top-class probability (or a tensor of them) falls below the threshold."""
    return top_probability < limit
