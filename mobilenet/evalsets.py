"""Evaluation sets: which there are under the data root, and one loaded for a model.

A model can be evaluated on the CIFAR-10 test split, on the validation split held out of its own
training data (same seed, size and subset as in training), or on an image folder or .zip in the data root.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import data, settings
from .checkpoint import ModelCard, TrainingData
from .data import DataError, ImageSet

VAL = "val"  # the validation split held out in training, beside data.SPLITS


@dataclass(frozen=True)
class EvalSource:
    label: str
    source: str  # "cifar10" or a folder / .zip path
    split: str  # "test", "train" (a folder without splits: all its images) or "val"


def missing_data_message(root: Path) -> str:
    return (
        f"No evaluation data found in `{root}/`. Download CIFAR-10 into it on a machine with internet "
        f"(`python -c \"from torchvision.datasets import CIFAR10; CIFAR10('{root}', train=False, download=True)\"`, "
        f"or extract cifar-10-python.tar.gz there), or put an image folder or .zip in it laid out as "
        f"`test/<class>/<image>` or `<class>/<image>`."
    )


def _source_exists(source: str, root: Path) -> bool:
    return (root / data.CIFAR10_FOLDER).is_dir() if source == "cifar10" else Path(source).exists()


@lru_cache(maxsize=64)
def _splits(path: Path, mtime_ns: int) -> tuple[str, ...]:  # mtime_ns: part of the cache key only
    try:
        return tuple(data.available_splits(str(path)))
    except (DataError, OSError, zipfile.BadZipFile):
        return ()


def sources(card: ModelCard, root: Path | None = None) -> list[EvalSource]:
    """What this model can be evaluated on, best first."""
    root = settings.data_root() if root is None else root
    found = []
    if _source_exists("cifar10", root):
        found.append(EvalSource("CIFAR-10 test set", "cifar10", "test"))
    trained_on = card.data.source if card.data else None
    if trained_on and _source_exists(trained_on, root):
        name = "CIFAR-10" if trained_on == "cifar10" else Path(trained_on).name
        found.append(EvalSource(f"validation split held out in training ({name})", trained_on, VAL))
    candidates = sorted(root.iterdir()) if root.is_dir() else []
    for path in candidates:
        if path.name.startswith(".") or path.name in ("cache", data.CIFAR10_FOLDER):
            continue
        if not (path.is_dir() or path.suffix.lower() == ".zip"):
            continue
        splits = _splits(path, path.stat().st_mtime_ns)
        if "test" in splits:
            found.append(EvalSource(f"{path.name}: test split", str(path), "test"))
        elif splits:
            found.append(EvalSource(f"{path.name}: all images", str(path), "train"))
    return found


def load(card: ModelCard, source: EvalSource, root: Path | None = None, download: bool = False,
         limit: int | None = None) -> ImageSet:
    """The images of a source at the model's resolution, labelled in the model's class order.

    With limit, a seeded class-balanced sample of that many images.
    """
    root = settings.data_root() if root is None else root
    if source.split == VAL:
        split = card.data or TrainingData(source.source, None)
        full = data.load(source.source, "train", card.resolution, root=root, download=download)
        _, images = data.split_train_val(full, split.val_size, split.seed, split.subset)
    else:
        images = data.load(source.source, source.split, card.resolution, root=root, download=download)
    images = data.match_classes(images, card.classes)
    if limit is not None and limit < len(images):
        images = images.subset(data.stratified_split(images.labels, limit, seed=0)[1])
    return images
