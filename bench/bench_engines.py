"""The engines side by side (torch, ONNX Runtime fp32, ONNX Runtime int8) against the seed's predict path; prints
markdown tables for BENCHMARKS.md.

    .venv/bin/python bench/bench_engines.py [--data ../shared/data/cifar10-train-jpeg.zip] [--quick]

Single image: bytes in, top-5 out, with the test-time augmentation the shipped cards ask for (the seed's path has
none), one
thread, contenders taking turns in blocks; beside them decoding alone (mobilenet.intake.decode, a JPEG at the
reduced DCT scale), the floor under every engine. Batch: predict_batch on 256 CIFAR-sized PNGs, and the network
alone (Classifier.probabilities on the decoded images, TTA included), what an engine can change. Evaluation: 10,000
decoded training-zip images (no CIFAR-10 test set on this machine), today's path (the unfolded torch model
through mobilenet.evaluate, torch's default threads) against Classifier.probabilities on every core. Accuracy:
each shipped model on its validation split in fp32 and int8. Concurrency: 16 threads × 100 predictions.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_inference import latencies, machine, noise_png, percentile, phone_photo, seed_predictor, timed  # noqa: E402
from mobilenet import Classifier, checkpoint, data  # noqa: E402
from mobilenet.catalog import default_checkpoint, shipped_checkpoints  # noqa: E402
from mobilenet.evaluate import evaluate, score  # noqa: E402
from mobilenet.intake import decode  # noqa: E402

ENGINES = ("torch", "onnx", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-train-jpeg.zip", help="the shipped models' data")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, or a busy machine)")
    args = parser.parse_args()
    scale = 0.3 if args.quick else 1.0
    default_threads = torch.get_num_threads()
    print(f"Machine: {machine()}\n")

    path = default_checkpoint()
    model, card = checkpoint.load(path)
    seed = seed_predictor(model, card)
    clfs = {engine: Classifier.load(path, device="cpu", engine=engine) for engine in ENGINES}  # one thread
    print(f"Weights: {path.name}, TTA {card.tta}\n")

    # "decoding alone" is the floor under any engine: the most int8 can be is seed / decoding (last column).
    print("| input | seed, 1 thread | seed, 2 threads | torch | onnx fp32 | int8 | int8 vs seed (1 / 2 threads) "
          "| decoding alone | seed, 1 thread / decoding alone |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, blob, rounds in [("32×32 PNG", noise_png((32, 32)), 20), ("12 MP phone JPEG", phone_photo(), 6)]:
        contenders = {"seed1": (1, seed), "seed2": (default_threads, seed)}
        contenders |= {engine: (1, clf.predict) for engine, clf in clfs.items()}
        contenders["decode"] = (1, lambda data: decode(data, draft_side=card.resolution))
        p50 = {k: percentile(v, 50) for k, v in latencies(blob, contenders, max(1, round(rounds * scale)), 5).items()}
        print(f"| {name} | {p50['seed1']:.2f} | {p50['seed2']:.2f} | {p50['torch']:.2f} | {p50['onnx']:.2f} "
              f"| {p50['int8']:.2f} | {p50['seed1'] / p50['int8']:.1f}× / {p50['seed2'] / p50['int8']:.1f}× "
              f"| {p50['decode']:.2f} | {p50['seed1'] / p50['decode']:.1f}× |")
    torch.set_num_threads(1)

    batch = [noise_png((32, 32), s) for s in range(256)]
    decoded = torch.stack([clfs["torch"].prepare(b) for b in batch])
    print("\n| predict_batch, 256 × 32×32 PNG, 1 thread | img/s | vs torch | network alone (probabilities), img/s "
          "| vs torch |\n|---|---:|---:|---:|---:|")
    rates, network = {}, {}
    for engine, clf in clfs.items():
        clf.predict_batch(batch[:8])
        best = min(timed(lambda: clf.predict_batch(batch)) for _ in range(max(1, round(3 * scale))))
        rates[engine] = len(batch) / best
        network[engine] = len(batch) / min(timed(lambda: clf.probabilities(decoded))
                                           for _ in range(max(1, round(3 * scale))))
        print(f"| {engine} | {rates[engine]:.0f} | {rates[engine] / rates['torch']:.2f}× | {network[engine]:.0f} "
              f"| {network[engine] / network['torch']:.2f}× |")

    full = data.match_classes(data.load(args.data, "train", card.resolution), card.classes)
    tenk = full.subset(slice(0, 10_000))
    torch.set_num_threads(default_threads)
    print(f"\n| evaluation of 10,000 decoded images, {default_threads} threads | s | img/s | vs today |")
    print("|---|---:|---:|---:|")
    today = timed(lambda: evaluate(model, tenk, card.inference))
    print(f"| today: unfolded torch model, mobilenet.evaluate | {today:.1f} | {len(tenk) / today:.0f} | 1.00× |")
    for engine in ENGINES:
        clf = Classifier.load(path, device="cpu", engine=engine, threads=None)
        seconds = timed(lambda: score(clf.probabilities(tenk.images), tenk))
        print(f"| Classifier, {engine} | {seconds:.1f} | {len(tenk) / seconds:.0f} | {today / seconds:.2f}× |")

    print("\n| model | fp32 (onnx) | int8 | int8 − fp32 | answers that differ |\n|---|---:|---:|---:|---:|")
    for shipped in shipped_checkpoints():
        fp32, int8 = (Classifier.load(shipped, device="cpu", engine=e, threads=None) for e in ("onnx", "int8"))
        split = int8.card.data
        _, measured, held_out = data.measurement_split(full, split.val_size, split.seed, split.subset)
        a, b = (score(c.probabilities(measured.images), measured) for c in (fp32, int8))
        differ = int((a.probs.argmax(1) != b.probs.argmax(1)).sum())
        where = "" if held_out else " (on its training images: it held none out)"
        print(f"| `{shipped.name}`{where} | {a.accuracy:.2%} | {b.accuracy:.2%} | "
              f"{(b.accuracy - a.accuracy) * 100:+.2f} | {differ} of {a.n} |")

    torch.set_num_threads(1)
    clf, images = clfs["int8"], batch[:16]
    serial = [clf.predict(b).top for b in images]
    calls = max(10, round(100 * scale))
    serial_s = timed(lambda: [clf.predict(images[i % 16]) for i in range(16 * calls)])

    def worker(offset: int) -> bool:
        return all(clf.predict(images[(offset + i) % 16]).top == serial[(offset + i) % 16] for i in range(calls))

    with ThreadPoolExecutor(16) as pool:
        start = time.perf_counter()
        same = all(pool.map(worker, range(16)))
        threaded_s = time.perf_counter() - start
    print(f"\n| 16 threads × {calls} predictions, one int8 Classifier | img/s | same as serial |\n|---|---:|---|")
    print(f"| serial | {16 * calls / serial_s:.0f} | |\n| 16 threads | {16 * calls / threaded_s:.0f} "
          f"| {'yes' if same else 'NO'} |")
    if not same:
        sys.exit("concurrent predictions differ from serial ones")


if __name__ == "__main__":
    main()
