"""Whether a shipped model's "not sure" threshold, set on fp32 PyTorch answers, means the same for its int8
model, which answers on a CPU by default: each engine's top-class probability on the same images, side by side.

    .venv/bin/python bench/ood_engines.py [--data ../shared/data/cifar10-train-jpeg.zip] [CHECKPOINT …]

The images are the 5,000 of the seeded validation split (seed 0) of the training zip. The shipped models trained on
them (their thresholds come from their twins, bench/ood.py), so the shares are higher than 95%: what this measures
is how far int8 moves the low tail the threshold cuts, and how many answers cross it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import data, ood  # noqa: E402
from mobilenet.catalog import shipped_checkpoints  # noqa: E402
from mobilenet.engines import EngineError  # noqa: E402
from mobilenet.infer import Classifier  # noqa: E402

ENGINES = ("torch", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-train-jpeg.zip")
    parser.add_argument("models", nargs="*", type=Path)
    args = parser.parse_args()
    _, val = data.split_train_val(data.load(args.data, "train", 32), 5000, 0)
    print("| model | threshold | 5% quantile fp32 | 5% quantile int8 | reach it, fp32 | reach it, int8 | answers that "
          "cross it |\n|---|---:|---:|---:|---:|---:|---:|")
    for path in args.models or shipped_checkpoints():
        threshold = ood.threshold(path)
        if threshold is None:
            continue
        try:
            top = {engine: Classifier.load(path, device="cpu", engine=engine).probabilities(val.images).max(1).values
                   for engine in ENGINES}
        except EngineError as e:  # no int8 model beside it (export-onnx makes one), or onnxruntime missing
            print(f"| `{path.name}` | {threshold:.4f} | {e} | | | | |", flush=True)
            continue
        tail = [f"{float(top[e].quantile(0.05)):.4f}" for e in ENGINES]
        reach = [f"{float((top[e] >= threshold).float().mean()):.2%}" for e in ENGINES]
        crossed = int(((top["torch"] >= threshold) != (top["int8"] >= threshold)).sum())
        print(f"| `{path.name}` | {threshold:.4f} | {' | '.join(tail)} | {' | '.join(reach)} | {crossed} of {len(val)} "
              f"({crossed / len(val):.1%}) |", flush=True)


if __name__ == "__main__":
    main()
