"""Which class activation map to show: plain Grad-CAM at the last 4×4 block (the first version) against
HiResCAM at the last 8×8 block (mobilenet.gradcam), for each shipped model on 1000 images of the
validation split its run held out.

    .venv/bin/python bench/gradcam.py [--data ../shared/data/cifar10-train-jpeg.zip]

Blank: the map of the predicted class is zero everywhere. Hiding the hottest (coldest) fifth of the
image, set to the mean colour, costs the predicted class this much probability on average: a map that
points at the evidence makes the first much larger than the second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import checkpoint, data, gradcam
from mobilenet.catalog import shipped_checkpoints
from mobilenet.model import feature_sides


def plain_gradcam(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor, block: int) -> torch.Tensor:
    """The first version: channels weighted by their spatially averaged gradient."""
    features, grad = gradcam.features_and_gradient(model, x, classes, block)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def hiding_cost(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor, maps: torch.Tensor,
                hottest: bool) -> float:
    """Mean loss of the class's probability when the hottest (or coldest) fifth of each image is hidden."""
    flat = maps.flatten(1) + 1e-6 * torch.rand(maps.flatten(1).shape, generator=torch.Generator().manual_seed(0))
    hidden = (flat if hottest else -flat).topk(flat.shape[1] // 5, 1).indices
    keep = torch.ones_like(flat).scatter_(1, hidden, 0).view(-1, 1, *maps.shape[1:])
    with torch.no_grad():
        before = model(x).softmax(1).gather(1, classes[:, None])
        after = model(x * keep).softmax(1).gather(1, classes[:, None])  # 0 is the mean colour once normalised
    return float((before - after).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/cifar10-train-jpeg.zip")
    args = parser.parse_args()
    full = data.load(args.data, "train", 32)
    print("| model | map | blank | hiding its hottest fifth costs | hiding its coldest fifth costs |\n"
          "|---|---|---:|---:|---:|")
    for path in shipped_checkpoints():
        model, card = checkpoint.load(path)
        model.eval().requires_grad_(False)
        split = card.data or checkpoint.TrainingData(args.data, None)
        _, val, held_out = data.measurement_split(full, split.val_size, split.seed, split.subset)
        images = val.images[data.stratified_split(val.labels, min(1000, len(val) - 1), seed=0)[1]]
        where = "" if held_out else " (its training images: it held none out)"
        x = card.inference.normalization.apply(images)
        with torch.no_grad():
            classes = model(x).argmax(1)
        last_4x4 = max(i for i, side in enumerate(feature_sides(card.stem, card.resolution)[1:]) if side >= 4)
        target = gradcam.target_block(card.stem, card.resolution)
        for name, maps in (
            (f"Grad-CAM, block {last_4x4} (4×4), before", plain_gradcam(model, x, classes, last_4x4)),
            (f"HiResCAM, block {target} (8×8), now", gradcam.class_maps(model, x, classes, target)),
        ):
            blank = float((maps.flatten(1).amax(1) <= 0).float().mean())
            print(f"| `{path.name}`{where} | {name} | {blank:.1%} | {hiding_cost(model, x, classes, maps, True):.3f} | "
                  f"{hiding_cost(model, x, classes, maps, False):.3f} |")


if __name__ == "__main__":
    main()
