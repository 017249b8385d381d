"""What flip test-time augmentation adds: each shipped model on the validation split its run held out,
with and without averaging over the horizontal flip.

    .venv/bin/python bench/flip_tta.py [--data ../shared/data/cifar10-train-jpeg.zip]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import checkpoint  # noqa: E402
from mobilenet.data import ImageSet, Normalization  # noqa: E402
from mobilenet.evaluate import evaluate  # noqa: E402
from mobilenet.infer import shipped_checkpoints  # noqa: E402
from mobilenet.train import TrainConfig, load_splits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/cifar10-train-jpeg.zip")
    args = parser.parse_args()

    @functools.cache  # the shipped models share one split: load it once per (seed, size)
    def val_split(seed: int, size: int) -> ImageSet:
        return load_splits(TrainConfig(data=args.data, seed=seed, val_size=size))[1]

    print("| model | without flip TTA | with flip TTA | gain |\n|---|---:|---:|---:|")
    for path in shipped_checkpoints():
        model, card = checkpoint.load(path)
        val_set = val_split(card.training["seed"], card.training["val_size"])
        normalization = Normalization(card.mean, card.std)
        plain, flipped = (evaluate(model, val_set, normalization, flip_tta=tta).accuracy for tta in (False, True))
        print(f"| `{path.name}` | {plain:.2%} | {flipped:.2%} | {(flipped - plain) * 100:+.2f} points |")


if __name__ == "__main__":
    main()
