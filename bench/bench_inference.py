"""Inference speed, side by side with the seed's predict path on the same weights; prints markdown tables.

    .venv/bin/python bench/bench_inference.py [--checkpoint FILE] [--quick]

Single-image latency is bytes in, top-5 out. The seed's path (PIL open, Resize, ToTensor, Normalize,
forward, softmax on the unfolded model) runs with torch's default threads, as in the blog post, and with
one thread, as Classifier.load sets; contenders take turns in short blocks so that background load
falls on all of them alike. Then batch throughput, each shipped model (latency and batch throughput by α)
and 16 threads sharing one classifier.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mobilenet import Classifier, checkpoint  # noqa: E402
from mobilenet.checkpoint import ModelCard  # noqa: E402
from mobilenet.data import CIFAR10_CLASSES  # noqa: E402
from mobilenet.tta import SEED_NORMALIZATION  # noqa: E402
from mobilenet.catalog import default_checkpoint, shipped_checkpoints  # noqa: E402
from mobilenet.model import MobileNetV1  # noqa: E402


def phone_photo(seed: int = 0) -> bytes:
    """A 12-megapixel JPEG (4000×3000, quality 90) with smooth content and sensor-like noise, a few MB."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((4000, 3000), Image.BICUBIC)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-8, 9, (3000, 4000, 3), dtype=np.int16)
    return encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "JPEG", quality=90)


def noise_png(size: tuple[int, int], seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)), "PNG")


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def weights(path: str | None, folder: Path) -> Path:
    """The given or shipped checkpoint; else random α=1.0 weights (speed does not depend on their values)."""
    if path:
        return Path(path)
    shipped = default_checkpoint()
    if shipped.exists():
        return shipped
    torch.manual_seed(0)
    card = ModelCard(1.0, "cifar", 32, CIFAR10_CLASSES, SEED_NORMALIZATION.mean, SEED_NORMALIZATION.std)
    checkpoint.save(folder / "random.pt", MobileNetV1(10, 1.0), card)
    return folder / "random.pt"


def seed_predictor(model: torch.nn.Module, card: ModelCard) -> Callable[[bytes], list[tuple[str, float]]]:
    """The seed's predict path, with the same weights and the checkpoint's normalisation."""
    transform = transforms.Compose([transforms.Resize((card.resolution, card.resolution)), transforms.ToTensor(),
                                    transforms.Normalize(card.mean, card.std)])

    def predict(data: bytes) -> list[tuple[str, float]]:
        x = transform(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        values, index = probs.topk(5)
        return [(card.classes[i], float(v)) for v, i in zip(values, index)]

    return predict


Predict = Callable[[bytes], object]


def latencies(data: bytes, contenders: dict[str, tuple[int, Predict]], rounds: int, block: int) -> dict[str, list]:
    """ms per call for each contender (name → (torch threads, predict)), taking turns in blocks of calls."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (threads, predict) in contenders.items():
            torch.set_num_threads(threads)
            predict(data)  # warm: a change of thread count rebuilds the pool
            for _ in range(block):
                start = time.perf_counter()
                predict(data)
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} (default {torch.get_num_threads()} threads), "
            f"load average {load:.2f} at start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: the shipped model, else random α=1.0 weights")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    default_threads = torch.get_num_threads()
    print(f"Machine: {machine()}\n")

    with tempfile.TemporaryDirectory() as tmp:
        path = weights(args.checkpoint, Path(tmp))
        model, card = checkpoint.load(path)
    # The torch engine with no TTA and with the flip, whatever the card asks for (the shipped cards ask for the
    # flip and translations, and ship an int8 model that Classifier.load would choose): the seed's network, like
    # for like. The shipped models' table below serves each as its card says.
    without_tta, with_tta = (Classifier(model, replace(card, tta=tta), "cpu") for tta in ("none", "flip"))
    seed = seed_predictor(model, card)
    print(f"Weights: {path.name} (α={card.alpha:g}, {card.resolution}×{card.resolution})\n")

    inputs = {
        "phone photo, 12 MP JPEG": (phone_photo(), 6),
        "640×480 PNG": (noise_png((640, 480)), 10),
        "32×32 PNG": (noise_png((32, 32)), 20),
    }
    seed_default, seed_one = f"seed, {default_threads} threads", "seed, 1 thread"
    print(f"| input | path | threads | p50 ms | p95 ms | speed-up vs seed at {default_threads} threads "
          "| speed-up vs seed at 1 thread |")
    print("|---|---|---|---|---|---|---|")
    contenders = {
        seed_default: (default_threads, seed),
        seed_one: (1, seed),
        "Classifier (torch, no TTA), 1 thread": (1, without_tta.predict),
        "Classifier (torch, flip TTA), 1 thread": (1, with_tta.predict),
    }
    for name, (data, rounds) in inputs.items():
        size = f"{len(data) / 1e6:.1f} MB" if len(data) > 1e5 else f"{len(data) / 1e3:.1f} kB"
        times = latencies(data, contenders, max(1, round(rounds * scale)), block=5)
        p50 = {contender: percentile(values, 50) for contender, values in times.items()}
        for contender, values in times.items():
            path_name, threads = contender.rsplit(", ", 1)
            print(f"| {name} ({size}) | {path_name} | {threads.split()[0]} | {p50[contender]:.1f} "
                  f"| {percentile(values, 95):.1f} | {p50[seed_default] / p50[contender]:.2f}× "
                  f"| {p50[seed_one] / p50[contender]:.2f}× |")
    torch.set_num_threads(1)

    batch = [noise_png((32, 32), seed) for seed in range(64)]
    print("\n| batch of 64 × 32×32 PNG | img/s |")
    print("|---|---|")
    for label, run in [("seed path, one image at a time, 1 thread", lambda: [seed(b) for b in batch]),
                       ("Classifier.predict_batch (torch, no TTA)", lambda: without_tta.predict_batch(batch)),
                       ("Classifier.predict_batch (torch, flip TTA)", lambda: with_tta.predict_batch(batch))]:
        run()
        best = min(timed(run) for _ in range(max(1, round(5 * scale))))
        print(f"| {label} | {len(batch) / best:.0f} |")

    print("\n| shipped model, 32×32 PNG, 1 thread, as its card serves it | engine | TTA | params | mult-adds | p50 ms "
          "| p95 ms | batch of 64, img/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    shipped = {path.name: Classifier.load(path, device="cpu") for path in shipped_checkpoints()}
    times = latencies(batch[0], {name: (1, c.predict) for name, c in shipped.items()}, max(1, round(20 * scale)),
                      block=5)
    for name, c in shipped.items():
        c.predict_batch(batch)
        best = min(timed(lambda: c.predict_batch(batch)) for _ in range(max(1, round(5 * scale))))
        print(f"| {name} (α={c.card.alpha:g}) | {c.engine} | {c.card.tta} | {c.card.training['params']:,} "
              f"| {c.card.training['mult_adds'] / 1e6:.2f} M | {percentile(times[name], 50):.1f} "
              f"| {percentile(times[name], 95):.1f} | {len(batch) / best:.0f} |")

    print("\n| 16 threads × 100 predictions, one shared Classifier (torch, no TTA; 32×32 PNG) | img/s "
          "| same as serial |")
    print("|---|---|---|")
    images = batch[:16]
    serial = [without_tta.predict(b).top for b in images]
    calls = max(10, round(100 * scale))
    serial_s = timed(lambda: [without_tta.predict(images[i % 16]) for i in range(16 * calls)])

    def worker(offset: int) -> bool:
        return all(without_tta.predict(images[(offset + i) % 16]).top == serial[(offset + i) % 16]
                   for i in range(calls))

    with ThreadPoolExecutor(16) as pool:
        start = time.perf_counter()
        same = all(pool.map(worker, range(16)))
        threaded_s = time.perf_counter() - start
    print(f"| serial, 1 thread | {16 * calls / serial_s:.0f} | |")
    print(f"| 16 threads | {16 * calls / threaded_s:.0f} | {'yes' if same else 'NO'} |")
    if not same:
        sys.exit("concurrent predictions differ from serial ones")


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
