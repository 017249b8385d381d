"""What test-time augmentation adds: each model on the validation split its run held out, fed with no TTA,
the flip, and the flip plus one-pixel translations (mobilenet.tta), side by side.

    .venv/bin/python bench/tta.py [--data ../shared/data/cifar10-train-jpeg.zip] [--last] [RUN_OR_CHECKPOINT …]

Without arguments: the shipped models. With --last, a run's last weights (last.pt) instead of its best.pt, and
beside them the moving average of the weights when the run kept one (what best.pt holds for such a run).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import checkpoint  # noqa: E402
from mobilenet.catalog import shipped_checkpoints  # noqa: E402
from mobilenet.checkpoint import TrainingData  # noqa: E402
from mobilenet.data import ImageSet, load, split_train_val  # noqa: E402
from mobilenet.evaluate import evaluate  # noqa: E402
from mobilenet.runs import RunFolder  # noqa: E402
from mobilenet.tta import TTA_MODES, InferenceRecipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", type=Path, help="checkpoints or run folders (default: the shipped ones)")
    parser.add_argument("--data", default="../shared/data/cifar10-train-jpeg.zip")
    parser.add_argument("--last", action="store_true", help="a run's last weights, and their average if kept")
    args = parser.parse_args()

    @functools.cache  # models that share a split load it once
    def val_split(seed: int, size: int, subset: int | None) -> ImageSet:
        return split_train_val(load(args.data, "train"), size, seed, subset)[1]

    print("| model | " + " | ".join(TTA_MODES) + " |\n|---|" + "---:|" * len(TTA_MODES))
    for name, model, card in models(args.models, args.last):
        if not card.held_out:  # its accuracy on images it trained on would say nothing
            print(f"| `{name}`: trained on all the images; measure its validating twin instead "
                  f"(`bench/tta.py runs/TWIN`) |" + " |" * len(TTA_MODES))
            continue
        split = card.data or TrainingData(args.data, None)  # no record: the defaults it would have trained with
        val_set = val_split(split.seed, split.val_size, split.subset)
        accuracy = [evaluate(model, val_set, InferenceRecipe(card.inference.normalization, tta)).accuracy
                    for tta in TTA_MODES]
        print(f"| `{name}` | " + " | ".join(f"{a:.2%}" for a in accuracy) + " |")


def models(given: list[Path], last: bool) -> Iterator[tuple[str, torch.nn.Module, checkpoint.ModelCard]]:
    """(name, model, card) of each checkpoint or run folder: its best.pt, or with last its last.pt and average."""
    for path in given or shipped_checkpoints():
        if not path.is_dir():
            yield (path.name, *checkpoint.load(path))
        elif not last:
            yield (path.name, *checkpoint.load(RunFolder(path).best))
        else:
            payload = checkpoint.read(RunFolder(path).last)
            model, card = checkpoint.restore(payload, path.name)
            yield f"{path.name} (last weights)", model, card
            average = payload["train_state"].get("ema")
            if average:
                model = card.build()
                model.load_state_dict(average["weights"])
                yield f"{path.name} (their average)", model, card

if __name__ == "__main__":
    main()
