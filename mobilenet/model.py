"""MobileNet v1 (Howard et al. 2017) with the width multiplier α and the resolution multiplier β.

Two stems share one body:
- "cifar": the seed's CIFAR-10 network, a 3×3 stride-1 stem without padding (32×32 → 30×30).
- "imagenet": the paper's Table 1 network, a 3×3 stride-2 stem with padding 1.
The last depthwise layer runs at stride 1 in both, as in the reference TF-slim code.
"""

from __future__ import annotations

import torch
from torch import nn

from .values import is_int

STEMS = ("cifar", "imagenet")
BASE_RESOLUTION = {"cifar": 32, "imagenet": 224}
NUM_CLASSES = {"cifar": 10, "imagenet": 1000}  # each stem's natural head: CIFAR-10's classes, ImageNet's
STEM_CHANNELS = 32
# Output channels and stride of each depthwise-separable block.
LAYOUT: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2), (128, 1),
    (256, 2), (256, 1),
    (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)
# Stem conv (stride, padding) per stem; every depthwise conv uses padding 1.
STEM_CONV = {"cifar": (1, 0), "imagenet": (2, 1)}


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DepthwiseSeparable(nn.Sequential):
    """3×3 depthwise conv + BN + ReLU, then 1×1 pointwise conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = conv_bn_relu(cin, cin, 3, stride, padding=1, groups=cin)
        self.pointwise = conv_bn_relu(cin, cout, 1)


def scaled(channels: int, alpha: float) -> int:
    return max(1, round(channels * alpha))


def check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or not 0 < alpha <= 4:
        raise ValueError(f"alpha (width multiplier) must be a number in (0, 4], got {alpha!r}")


def check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 10, alpha: float = 1.0, stem: str = "cifar") -> None:
        super().__init__()
        check_alpha(alpha)
        check_stem(stem)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")

        stride, padding = STEM_CONV[stem]
        cin = scaled(STEM_CHANNELS, alpha)
        self.stem = conv_bn_relu(3, cin, 3, stride, padding)
        blocks = []
        for channels, block_stride in LAYOUT:
            cout = scaled(channels, alpha)
            blocks.append(DepthwiseSeparable(cin, cout, block_stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        # Adaptive pooling: the seed's AvgPool2d(2) at 32×32, and any other valid resolution too.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(x, 1))


def feature_sides(stem: str, resolution: int) -> list[int]:
    """Spatial side after the stem and after each block, for a square input."""
    check_stem(stem)
    stride, padding = STEM_CONV[stem]
    side = (resolution + 2 * padding - 3) // stride + 1
    sides = [side]
    for _, block_stride in LAYOUT:
        side = (side + 2 - 3) // block_stride + 1
        sides.append(side)
    return sides


def min_resolution(stem: str) -> int:
    resolution = 1
    while min(feature_sides(stem, resolution)) < 1:
        resolution += 1
    return resolution


def input_resolution(stem: str = "cifar", beta: float | None = None, resolution: int | None = None) -> int:
    """The input side: an explicit resolution, or round(base × β) (base 32 for cifar, 224 for imagenet)."""
    check_stem(stem)
    if beta is not None and resolution is not None:
        raise ValueError("give either beta or resolution, not both")
    if resolution is None:
        beta = 1.0 if beta is None else beta
        if not isinstance(beta, (int, float)) or not 0 < beta <= 8:
            raise ValueError(f"beta (resolution multiplier) must be a number in (0, 8], got {beta!r}")
        resolution = round(BASE_RESOLUTION[stem] * beta)
    if not is_int(resolution):
        raise ValueError(f"resolution must be an integer, got {resolution!r}")
    smallest = min_resolution(stem)
    if resolution < smallest:
        raise ValueError(
            f"input resolution {resolution}×{resolution} is too small for the {stem} stem; "
            f"the smallest that works is {smallest}×{smallest}"
        )
    if resolution > 2048:
        raise ValueError(f"input resolution {resolution} is too large; at most 2048")
    return resolution
