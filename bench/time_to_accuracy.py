"""Epoch time and time to a validation accuracy, read from the metrics of one or more runs.

    .venv/bin/python bench/time_to_accuracy.py runs/a1.0-fast runs/a0.5-fast [--target 0.9]

For the GPU goal (90% in under a minute on one H100): train with `--device cuda` on the zip, then run this.
Time counts training and validation from the run's start (elapsed_s), not data loading before it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import checkpoint  # noqa: E402
from mobilenet.display import format_duration  # noqa: E402
from mobilenet.runs import RunFolder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--target", type=float, default=0.9, help="validation accuracy as a fraction")
    args = parser.parse_args()
    print(f"| run | device | epochs | median epoch | best validation | time to {args.target:.0%} |")
    print("|---|---|---:|---:|---:|---:|")
    for run in args.runs:
        folder = RunFolder(run)
        epochs = [r for r in folder.read_metrics() if r.kind == "epoch"]
        if not epochs:
            print(f"| {run.name} | | 0 | | | |")
            continue
        ends = [0.0] + [r.elapsed_s for r in epochs]
        median = statistics.median(b - a for a, b in zip(ends, ends[1:]))
        reached = next((r for r in epochs if (r.val_acc or 0) >= args.target), None)
        when = f"{format_duration(reached.elapsed_s)} (epoch {reached.epoch})" if reached else "not reached"
        best = max(r.val_acc or 0 for r in epochs)
        saved = next((f for f in (folder.best, folder.last) if f.exists()), None)  # a failed run may have no best.pt
        training = checkpoint.read(saved)["card"]["training"] if saved else {}
        moved = training.get("devices", [])  # a run that moved: each device and its epochs (the median mixes them)
        device = " + ".join(f"{name} ({epochs})" for name, epochs, _ in moved) if len(moved) > 1 else \
            training.get("device", "?")
        print(f"| {run.name} | {device} | {len(epochs)} | {median:.1f} s | {best:.2%} | {when} |")


if __name__ == "__main__":
    main()
