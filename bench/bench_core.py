"""Model statistics latency (what a slider waits for) and data decode / cache times for the shared zip.

    .venv/bin/python bench/bench_core.py [--zip ../shared/data/cifar10-train-jpeg.zip]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import data  # noqa: E402
from mobilenet.stats import model_stats  # noqa: E402


def median_ms(fn, repeat: int = 20) -> float:
    fn()  # warm-up: first call imports and builds torchinfo's machinery
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", default="../shared/data/cifar10-train-jpeg.zip")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
    print("| model statistics | median ms |\n|---|---:|")
    for label, kwargs in [("α=1, cifar stem, 32×32", {}), ("α=2, imagenet stem, 224×224, 1000 classes",
                                                           {"alpha": 2.0, "stem": "imagenet", "num_classes": 1000})]:
        print(f"| {label} | {median_ms(lambda: model_stats(**kwargs)):.1f} |")
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        first = data.load(args.zip, "train", root=root)
        decode = time.perf_counter() - start
        start = time.perf_counter()
        data.load(args.zip, "train", root=root)
        cached = time.perf_counter() - start
    print(f"\n| loading {len(first):,} JPEGs from {Path(args.zip).name} | seconds |\n|---|---:|")
    print(f"| first load: decode on {os.cpu_count()} processes + write cache | {decode:.1f} |")
    print(f"| second load: from the cache | {cached:.2f} |")


if __name__ == "__main__":
    main()
