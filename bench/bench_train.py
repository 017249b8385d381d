"""Training throughput, side by side in one run on one machine:

(a) this project's trainer (train.train on the JPEG zip, img/s as it records it for its second epoch: training
    steps only, warm, so one-off start-up and torch.compile's compiling are not counted),
(b) the seed's pipeline re-implemented faithfully: ImageFolder over the JPEGs, PIL RandomCrop + flip +
    ToTensor + Normalize, DataLoader(num_workers=2), batch 64, SGD, NCHW model,
(c) the compute ceiling: the same model and batch on in-memory random tensors, channels_last (also in
    the seed's NCHW layout, and under bf16 autocast to see whether the CPU's bf16 support would lift it).

    .venv/bin/python bench/bench_train.py [--zip ../shared/data/cifar10-train-jpeg.zip] [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import train  # noqa: E402
from mobilenet.model import MobileNetV1  # noqa: E402
from mobilenet.config import TrainConfig  # noqa: E402
from mobilenet.runs import RunFolder  # noqa: E402


def sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def time_steps(batches, model: torch.nn.Module, steps: int, warmup: int = 5) -> float:
    """img/s over `steps` SGD steps after `warmup` steps, pulling (x, y) from `batches`."""
    optimizer = sgd(model)
    model.train()
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            start, seen = time.perf_counter(), 0
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
        if i == warmup + steps - 1:
            break
    return seen / (time.perf_counter() - start)


def extract(zip_path: Path, work: Path) -> Path:
    """The zip's JPEGs as files under work, for the seed's ImageFolder; returns the train/ folder."""
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(work / "jpeg")
    return work / "jpeg" / "train"


def seed_pipeline(folder: Path, batch: int, steps: int) -> float:
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(folder, transform), batch_size=batch, shuffle=True,
                                         num_workers=2)

    def batches():
        while True:
            yield from loader

    torch.manual_seed(0)
    return time_steps(batches(), MobileNetV1(), steps)


def ceiling(batch: int, steps: int, bf16: bool = False, layout: torch.memory_format = torch.channels_last) -> float:
    torch.manual_seed(0)
    model = MobileNetV1().to(memory_format=layout)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return time_steps(iter(lambda: (x, y), None), model, steps)


def trainer(zip_path: Path, batch: int, steps: int, work: Path, compile: bool = False) -> float:
    out = work / f"run-{batch}-{compile}"
    cfg = TrainConfig(data=str(zip_path), epochs=2, batch_size=batch, subset=batch * steps + 1000, val_size=1000,
                      device="cpu", data_root=str(work / "root"), compile=compile)
    train.train(cfg, out)
    return [r.img_per_s for r in RunFolder(out).read_metrics() if r.kind == "epoch"][-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", default="../shared/data/cifar10-train-jpeg.zip")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    zip_path = Path(args.zip).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = extract(zip_path, work)
        rows = [
            ("(b) seed pipeline: ImageFolder + PIL transforms + DataLoader(2 workers), NCHW", 64,
             seed_pipeline(images, 64, args.steps)),
            ("(a) this trainer: uint8 tensor + batched crop/flip, channels_last", 64,
             trainer(zip_path, 64, args.steps, work)),
            ("(c) ceiling: same model on in-memory random tensors, channels_last", 64, ceiling(64, args.steps)),
            ("(c) ceiling, NCHW as the seed", 64, ceiling(64, args.steps, layout=torch.contiguous_format)),
            ("(a) this trainer, default batch", 128, trainer(zip_path, 128, args.steps, work)),
            ("(c) ceiling, default batch", 128, ceiling(128, args.steps)),
            ("(a) this trainer, default batch, --compile", 128, trainer(zip_path, 128, args.steps, work, compile=True)),
            ("(c) ceiling, default batch, bf16 autocast", 128, ceiling(128, args.steps, bf16=True)),
        ]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| pipeline | batch | train img/s |\n|---|---:|---:|")
    for name, batch, speed in rows:
        print(f"| {name} | {batch} | {speed:.0f} |")
    seed, ours64, ceil64, _, ours128, ceil128, *_ = (r[2] for r in rows)
    print(f"\ntrainer / seed: {ours64 / seed:.2f}× (batch 64), {ours128 / seed:.2f}× (batch 128); "
          f"trainer / ceiling: {ours64 / ceil64:.0%} (batch 64), {ours128 / ceil128:.0%} (batch 128)")


if __name__ == "__main__":
    main()
