"""Class activation maps: where in an image the network found evidence for a class, for any class it knows.

The map is HiResCAM (Draelos & Carin 2020), the element-wise form of Grad-CAM (Selvaraju et al. 2017), at
the last block whose feature map is at least 8×8 (block 4 at CIFAR's 32×32): at each position,
Σ_k ∂logit/∂A_k · A_k, the first-order share of that position in the class's logit, kept where positive.

Plain Grad-CAM weights each channel by its gradient averaged over the map. At the last 4×4 block, which
this project used first, those averages cancel: the weighted map was negative at every position, so
blank after the ReLU, for 47% of the α=1 model's validation predictions (and for a real cat photo it
called "cat" at 90%), and where it was not blank, hiding its hottest fifth of the image cost the class
less than hiding its coldest fifth. bench/gradcam.py measures both; the table is in BENCHMARKS.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import MobileNetV1, feature_sides

MIN_SIDE = 8  # smaller maps are too coarse to point at anything in a 32×32 image


def target_block(stem: str, resolution: int) -> int:
    """Index of the last block whose feature map is at least MIN_SIDE wide (the first block if none is)."""
    sides = feature_sides(stem, resolution)[1:]
    return max((i for i, side in enumerate(sides) if side >= MIN_SIDE), default=0)


def features_and_gradient(model: MobileNetV1, x: torch.Tensor, classes: torch.Tensor,
                          block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature maps after `block` and the gradient of each image's class logit with respect to them."""
    with torch.no_grad():
        features = model.blocks[:block + 1](model.stem(x))
    with torch.enable_grad():
        features.requires_grad_(True)
        logits = model.classifier(torch.flatten(model.pool(model.blocks[block + 1:](features)), 1))
        (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), features)
    return features.detach(), grad


def evidence(model: MobileNetV1, x: torch.Tensor, classes: torch.Tensor, block: int) -> torch.Tensor:
    """N×h×w evidence of each image for its class, before the ReLU (x: normalised N×3×R×R, classes: N)."""
    features, grad = features_and_gradient(model, x, classes, block)
    return (grad * features).sum(1)


def class_maps(model: MobileNetV1, x: torch.Tensor, classes: torch.Tensor, block: int) -> torch.Tensor:
    """N×R×R maps in 0..1, each scaled to its own peak; all zero where nothing speaks for the class."""
    positive = F.relu(evidence(model, x, classes, block))[:, None]
    maps = F.interpolate(positive, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(peak > 0, maps / peak.clamp_min(1e-12), maps).cpu()
