"""Latency and throughput of the shipped default model on a device, timed after the device has finished.

    .venv/bin/python bench/gpu_inference.py [--device cuda] [--model CHECKPOINT]

Latency: one 32×32 image with the model's test-time augmentation, p50 and p95 of 200 calls of
`Classifier.probabilities` on a prepared uint8 tensor (decoding is CPU work, measured in bench_inference.py).
Throughput: batches of 256 and 1024 images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import Classifier  # noqa: E402


def timed(fn, device: torch.device) -> float:
    """Seconds for fn(), with the device's queued work finished before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", help="a checkpoint or run folder (default: the shipped default model)")
    args = parser.parse_args()
    clf = Classifier.load(args.model, device=args.device, engine="torch")
    device = clf.device
    one = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    for _ in range(20):
        clf.probabilities(one)
    latencies = sorted(timed(lambda: clf.probabilities(one), device) * 1000 for _ in range(200))
    print(f"| device | TTA | p50 ms | p95 ms |\n|---|---|---:|---:|\n| {device} | {clf.recipe.tta} | "
          f"{statistics.median(latencies):.2f} | {latencies[int(0.95 * len(latencies))]:.2f} |\n")
    print("| batch | img/s |\n|---:|---:|")
    for batch in (256, 1024):
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
        clf.probabilities(images)
        seconds = min(timed(lambda: clf.probabilities(images), device) for _ in range(5))
        print(f"| {batch} | {batch / seconds:,.0f} |")


if __name__ == "__main__":
    main()
