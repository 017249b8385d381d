"""Distillation targets: what trained models (one, or an ensemble averaged) predict for each training image.

Computed once when a run starts, each teacher fed as its card says (normalisation, test-time augmentation),
and saved with the run's state, so a resumed run uses exactly the same targets. Each teacher's answers are kept
in the data root's cache, keyed by its weights, its recipe and the images, so the next run on the same images
(another width of the ladder) reads them instead of running the teacher again (4-5 minutes per α=1 teacher on
one CPU thread). A run that validates refuses a teacher that was not trained with the same validation split held
out: its targets would carry the validation images' labels into training, and the validation accuracy would
flatter the student.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from . import checkpoint
from .checkpoint import ModelCard, TrainingData, atomic_torch_save
from .data import CACHE_FOLDER, ImageSet
from .evaluate import predict_probs


def check_held_out(teacher: str, data: TrainingData | None, held_out: TrainingData) -> None:
    """ValueError unless the teacher trained on the same source with the same validation split held out."""
    same = (data is not None and data.fingerprint is not None and held_out.fingerprint == data.fingerprint
            and (data.val_size, data.seed, data.subset) == (held_out.val_size, held_out.seed, held_out.subset))
    if not same:
        raise ValueError(
            f"teacher {teacher} was not trained with this run's validation split held out (same data, --val-size "
            f"{held_out.val_size}, --seed {held_out.seed}), so its targets would leak the validation labels; use "
            "such a teacher, or train without validation (--val-size 0)")


TEACHER_CACHE_VERSION = 1  # bump when a teacher's answers would change (predict_probs, test-time augmentation)


def _images_digest(images: torch.Tensor) -> str:
    array = images.cpu().contiguous().numpy()
    return hashlib.sha256(f"{array.shape} {array.dtype} ".encode() + memoryview(array).cast("B")).hexdigest()


def _teacher_probs(model: torch.nn.Module, card: ModelCard, weights: str, images: torch.Tensor,
                   images_digest: str | None, cache: Path | None) -> torch.Tensor:
    """predict_probs of one teacher (`weights`: its weights digest), read from `cache` when it has answered these
    images before."""
    file = None
    if cache is not None:
        key = f"{TEACHER_CACHE_VERSION} {weights} {card.inference} {images_digest}"
        file = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"
    if file is not None and file.exists():
        try:
            probs = torch.load(file, weights_only=True)
            if (isinstance(probs, torch.Tensor) and probs.shape == (len(images), card.num_classes)
                    and probs.dtype == torch.float32 and bool(probs.isfinite().all())):
                return probs
        except Exception:  # a damaged cache file is computed again, never trusted (torch.load raises many kinds)
            pass
    probs = predict_probs(model.to(images.device), images, card.inference)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(probs, file)
    return probs


def cache_folder(data_root: Path | str) -> Path:
    """Where the teachers' answers are kept, beside the decoded images."""
    return Path(data_root) / CACHE_FOLDER / "teachers"


def soft_targets(teachers: list[str], train_set: ImageSet, held_out: TrainingData | None,
                 cache: Path | None = None) -> torch.Tensor:
    """The teachers' averaged class probabilities for each training image (N×classes, float32 on its device).

    held_out: the student's validation split, which every teacher must have held out too (None: no validation).
    cache: a folder that keeps each teacher's answers for the next run on the same images (None: none kept).
    """
    total = torch.zeros(len(train_set), len(train_set.classes))
    resolution = train_set.images.shape[-1]
    images_digest = None if cache is None else _images_digest(train_set.images)
    for path in teachers:
        name = Path(path).name
        payload = checkpoint.read(path)  # its weights checked against their digest, which keys the cache
        model, card = checkpoint.restore(payload, name)
        if card.classes != train_set.classes:
            raise ValueError(f"teacher {name} knows {', '.join(card.classes)}, not this data's classes")
        if card.resolution != resolution:
            raise ValueError(f"teacher {name} takes {card.resolution}×{card.resolution} images, not {resolution}")
        if held_out is not None:
            check_held_out(name, card.data, held_out)
        total += _teacher_probs(model, card, payload["digest"], train_set.images, images_digest, cache)
    return (total / len(teachers)).to(train_set.images.device)
