"""Distillation targets: what trained models (one, or an ensemble averaged) predict for each training image.

Computed once when a run starts, each teacher fed as its card says (normalisation, test-time augmentation),
and saved with the run's state, so a resumed run uses exactly the same targets. A run that validates refuses a
teacher that was not trained with the same validation split held out: its targets would carry the validation
images' labels into training, and the validation accuracy would flatter the student.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint
from .checkpoint import TrainingData
from .data import ImageSet
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


def soft_targets(teachers: list[str], train_set: ImageSet, held_out: TrainingData | None) -> torch.Tensor:
    """The teachers' averaged class probabilities for each training image (N×classes, float32 on its device).

    held_out: the student's validation split, which every teacher must have held out too (None: no validation).
    """
    total = torch.zeros(len(train_set), len(train_set.classes))
    resolution = train_set.images.shape[-1]
    for path in teachers:
        name = Path(path).name
        model, card = checkpoint.load(path)
        if card.classes != train_set.classes:
            raise ValueError(f"teacher {name} knows {', '.join(card.classes)}, not this data's classes")
        if card.resolution != resolution:
            raise ValueError(f"teacher {name} takes {card.resolution}×{card.resolution} images, not {resolution}")
        if held_out is not None:
            check_held_out(name, card.data, held_out)
        total += predict_probs(model.to(train_set.images.device), train_set.images, card.inference)
    return (total / len(teachers)).to(train_set.images.device)
