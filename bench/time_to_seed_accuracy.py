"""Time to the seed's accuracy, as a user waits for it, side by side in one run on one machine.

(a) the seed's pipeline (bench_train.seed_pipeline: ImageFolder + PIL transforms + DataLoader, batch 64, NCHW):
    its img/s measured here, times the 20 epochs of 50,000 images after which the blog post reported 69.6%;
(b) this trainer on the same JPEG zip, α=1 (the seed's network), the default recipe on a short schedule:
    wall time from the call to the end of the schedule, data decode included, and the validation accuracy then
    (validated once, after the last epoch, as a user who wants a model fast would: (a) counts no evaluation).

    .venv/bin/python bench/time_to_seed_accuracy.py [--zip ../shared/data/cifar10-train-jpeg.zip] [--epochs 4]

Keep the machine otherwise idle while it runs (pause a background training job with kill -STOP PID).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import extract, seed_pipeline  # noqa: E402

from mobilenet import train  # noqa: E402
from mobilenet.config import TrainConfig  # noqa: E402
from mobilenet.display import format_duration  # noqa: E402
from mobilenet.runs import MetricsRow  # noqa: E402

SEED_ACCURACY, SEED_EPOCHS, SEED_IMAGES = 0.696, 20, 50_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", default="../shared/data/cifar10-train-jpeg.zip")
    parser.add_argument("--epochs", type=int, default=4, help="length of our one-cycle schedule")
    parser.add_argument("--steps", type=int, default=60, help="steps over which the seed pipeline's speed is measured")
    parser.add_argument("--subset", type=int, help="smoke runs only: train on this many images")
    args = parser.parse_args()
    zip_path = Path(args.zip).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seed_img_s = seed_pipeline(extract(zip_path, work), 64, args.steps)
        reached: list[tuple[MetricsRow, float]] = []
        start = time.perf_counter()
        cfg = TrainConfig(data=str(zip_path), epochs=args.epochs, val_every=args.epochs, subset=args.subset,
                          data_root=str(work / "root"))
        train.train(cfg, work / "run", on_epoch=lambda row: reached.append((row, time.perf_counter() - start)))
    seed_s = SEED_EPOCHS * SEED_IMAGES / seed_img_s
    ours = next(((row, t) for row, t in reached if (row.val_acc or 0) >= SEED_ACCURACY), None)
    print(f"| pipeline | speed | time to {SEED_ACCURACY:.1%} |\n|---|---:|---:|")
    print(f"| (a) seed pipeline, {SEED_EPOCHS} epochs (the blog's) | {seed_img_s:.0f} img/s "
          f"| {format_duration(seed_s)} |")
    best = max(row.val_acc or 0 for row, _ in reached)
    if ours:
        row, seconds = ours
        print(f"| (b) this trainer, α=1, {args.epochs}-epoch schedule: epoch {row.epoch} at {row.val_acc:.2%} | "
              f"{row.img_per_s:.0f} img/s | {format_duration(seconds)} |")
        print(f"\nspeed-up to the seed's accuracy: {seed_s / seconds:.1f}×")
    else:
        print(f"| (b) this trainer, α=1, {args.epochs}-epoch schedule | | not reached (best {best:.2%}) |")


if __name__ == "__main__":
    main()
