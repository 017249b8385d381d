"""How a model is fed at inference: normalisation and test-time augmentation, one object for every caller.

Validation during training, `evaluate` and the Classifier all run `InferenceRecipe.logits`, so a model is
scored exactly as it answers. The views of all modes go through the network in one batched pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in 0..255) N×3×H×W → normalised float."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1) * 255
        return (images.float() - mean) / std


CIFAR10_NORMALIZATION = Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
SEED_NORMALIZATION = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# "flip-translate" is the flip plus one-pixel shifts (reflect-padded) of both views, weighted as the
# fastest CIFAR-10 trainers do: half for the image and its mirror, half for the four shifted views.
TTA_MODES = ("none", "flip", "flip-translate")

# Pixels of the views in one forward pass. On a CPU a pass of a few hundred 32×32 views runs at full speed and one
# of 3,000 (500 images with flip-translate) at 40% of it: its activations no longer stay in the cache
# (BENCHMARKS.md, "Forward passes"). A GPU wants large passes.
CPU_PASS_PIXELS = 256 * 32 * 32
GPU_PASS_PIXELS = 4096 * 32 * 32


@dataclass(frozen=True)
class InferenceRecipe:
    normalization: Normalization
    tta: str = "none"

    def __post_init__(self) -> None:
        if self.tta not in TTA_MODES:
            raise ValueError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")

    @property
    def views_per_image(self) -> int:
        return {"none": 1, "flip": 2, "flip-translate": 6}[self.tta]

    def views(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×3×H×W → the normalised views, view-major: (views × N)×3×H×W, channels_last."""
        x = self.normalization.apply(images)
        if self.tta != "none":
            x = torch.cat([x, x.flip(3)])
        if self.tta == "flip-translate":
            h, w = x.shape[-2:]
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect" if min(h, w) > 1 else "replicate")  # reflect needs 2 px
            x = torch.cat([x, padded[..., :h, :w], padded[..., 2:h + 2, 2:w + 2]])
        return x.contiguous(memory_format=torch.channels_last)

    def batches(self, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
        """N×3×H×W images in batches whose views make one forward pass of the right size for the device."""
        budget = CPU_PASS_PIXELS if device.type == "cpu" else GPU_PASS_PIXELS
        views = self.views_per_image * images.shape[-2] * images.shape[-1]
        return images.split(max(1, budget // views)) if len(images) else ()  # split() would give one empty batch

    def combine(self, logits: torch.Tensor, n: int) -> torch.Tensor:
        """The views' logits (as ordered by `views`) → one row of logits per image."""
        per_view = logits.view(self.views_per_image, n, -1)
        if self.tta == "flip-translate":
            return per_view[:2].mean(0) / 2 + per_view[2:].mean(0) / 2
        return per_view.mean(0)

    def logits(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """Float32 logits of uint8 images (on the model's device) with this recipe's augmentation."""
        return self.combine(model(self.views(images)).float(), len(images))

    def probabilities(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        return self.logits(model, images).softmax(1)
