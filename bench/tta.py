"""What test-time augmentation adds: each model on the validation split its run held out, fed with no TTA,
the flip, and the flip plus one-pixel translations (mobilenet.tta), side by side.

    .venv/bin/python bench/tta.py [--data ../shared/data/cifar10-train-jpeg.zip] [RUN_OR_CHECKPOINT …]

Without arguments: the shipped models.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import checkpoint  # noqa: E402
from mobilenet.catalog import shipped_checkpoints  # noqa: E402
from mobilenet.data import ImageSet, load, split_train_val  # noqa: E402
from mobilenet.evaluate import evaluate  # noqa: E402
from mobilenet.runs import RunFolder  # noqa: E402
from mobilenet.tta import TTA_MODES, InferenceRecipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", type=Path, help="checkpoints or run folders (default: the shipped ones)")
    parser.add_argument("--data", default="../shared/data/cifar10-train-jpeg.zip")
    args = parser.parse_args()

    @functools.cache  # models that share a split load it once
    def val_split(seed: int, size: int, subset: int | None) -> ImageSet:
        return split_train_val(load(args.data, "train"), size, seed, subset)[1]

    paths = [RunFolder(p).best if p.is_dir() else p for p in args.models] or shipped_checkpoints()
    print("| model | " + " | ".join(TTA_MODES) + " |\n|---|" + "---:|" * len(TTA_MODES))
    for path in paths:
        model, card = checkpoint.load(path)
        val_set = val_split(card.data.seed, card.data.val_size, card.data.subset)
        accuracy = [evaluate(model, val_set, InferenceRecipe(card.inference.normalization, tta)).accuracy
                    for tta in TTA_MODES]
        name = path.parent.name if path.name == "best.pt" else path.name
        print(f"| `{name}` | " + " | ".join(f"{a:.2%}" for a in accuracy) + " |")


if __name__ == "__main__":
    main()
