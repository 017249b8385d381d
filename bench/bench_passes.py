"""Forward passes sized by the device (InferenceRecipe.batches) against the fixed 500 images per pass they replaced,
side by side in one run: validation and `evaluate` (the model as it trains, BN unfolded) and the Classifier's torch
engine (BN folded), α=1, for each test-time augmentation, on one thread unless told otherwise.

    .venv/bin/python bench/bench_passes.py [--images 1000] [--threads 1]   # about 3 minutes
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet.evaluate import predict_probs  # noqa: E402
from mobilenet.infer import fold_batchnorm  # noqa: E402
from mobilenet.model import MobileNetV1  # noqa: E402
from mobilenet.tta import SEED_NORMALIZATION, TTA_MODES, InferenceRecipe  # noqa: E402

OLD_BATCH = 500  # images per pass before


@torch.inference_mode()
def fixed_passes(model: torch.nn.Module, images: torch.Tensor, recipe: InferenceRecipe) -> torch.Tensor:
    return torch.cat([recipe.probabilities(model, batch) for batch in images.split(OLD_BATCH)])


@torch.inference_mode()
def sized_passes(model: torch.nn.Module, images: torch.Tensor, recipe: InferenceRecipe) -> torch.Tensor:
    return predict_probs(model, images, recipe)


def images_per_second(run: Callable[[], torch.Tensor], n: int) -> float:
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    trained = MobileNetV1(10, 1.0).to(memory_format=torch.channels_last).eval()
    models = {"validation / evaluate (BN unfolded)": trained,
              "Classifier, torch engine (BN folded)": fold_batchnorm(trained).to(memory_format=torch.channels_last)}
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.images} random 32×32 images, α=1\n")
    print("| path | TTA | views per image | 500 images per pass img/s | sized passes img/s | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for name, model in models.items():
        for tta in TTA_MODES:
            recipe = InferenceRecipe(SEED_NORMALIZATION, tta)
            torch.testing.assert_close(sized_passes(model, images[:100], recipe),  # the same answers; a warm-up
                                       fixed_passes(model, images[:100], recipe), atol=1e-5, rtol=1e-4)
            old = images_per_second(lambda: fixed_passes(model, images, recipe), args.images)
            new = images_per_second(lambda: sized_passes(model, images, recipe), args.images)
            print(f"| {name} | {tta} | {recipe.views_per_image} | {old:.0f} | {new:.0f} | {new / old:.2f}× |",
                  flush=True)


if __name__ == "__main__":
    main()
