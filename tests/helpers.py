"""Test helpers, one module: generated datasets, random-weight checkpoints, image bytes, run folders, the app's
isolated folders, loopback HTTP servers that record visits, and waiting for a condition."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import socket
import struct
import subprocess
import tarfile
import threading
import time
import zipfile
import zlib
from contextlib import redirect_stderr, redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from torch import nn

from mobilenet import checkpoint
from mobilenet.__main__ import main
from mobilenet.checkpoint import ModelCard, TrainingData
from mobilenet.config import TrainConfig
from mobilenet.data import CIFAR10_CLASSES
from mobilenet.evaluate import Evaluation
from mobilenet.model import MobileNetV1
from mobilenet.runs import MetricsRow, RunFolder, RunReport, RunState
from mobilenet.tta import CIFAR10_NORMALIZATION

CLASSES = ("cat", "dog", "ship")


def class_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A learnable image: each class has its own colour and stripe direction, plus noise."""
    base = np.zeros((size, size, 3), np.float32)
    base[..., label % 3] = 160
    stripes = (np.arange(size) // 4 % 2) * 80
    base += stripes[:, None, None] if label % 2 else stripes[None, :, None]
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def write_folder(root: Path, per_class: int = 12, splits: tuple[str, ...] = ("train", "test"), size: int = 32,
                 fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for label, name in enumerate(CLASSES):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(class_image(label, rng, size)).save(folder / f"{i:04d}.{fmt.lower()}", fmt)
    return root


def tiny_config(data: Path, root: Path, **overrides) -> TrainConfig:
    """A training config that trains on the generated images in seconds: α=0.25, batch 16, on the CPU."""
    settings = dict(data=str(data), alpha=0.25, epochs=3, batch_size=16, lr=0.05, val_size=24, device="cpu",
                    data_root=str(root))
    return TrainConfig(**(settings | overrides))


def zip_folder(folder: Path, target: Path, top: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{top}{path.relative_to(folder).as_posix()}")
    return target


def write_cifar_archive(target: Path, per_batch: int = 20) -> dict[str, str]:
    """A cifar-10-python.tar.gz in the real layout; returns the md5 of each member for torchvision's checks."""
    rng = np.random.default_rng(1)
    members: dict[str, bytes] = {}
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        data = np.stack([class_image(label, rng).transpose(2, 0, 1).reshape(-1) for label in labels])
        members[name] = pickle.dumps({"batch_label": name, "labels": labels, "data": data,
                                      "filenames": [f"{i}.png" for i in range(per_batch)]})
    label_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    members["batches.meta"] = pickle.dumps({"label_names": label_names})
    with tarfile.open(target, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return {name: hashlib.md5(blob).hexdigest() for name, blob in members.items()}


def save_model(path: Path, alpha: float = 0.25, classes: tuple[str, ...] = CIFAR10_CLASSES,
               training: dict | None = None, data: TrainingData | None = None, tta: str = "none") -> ModelCard:
    """A random-weight checkpoint (seeded) with a complete card."""
    torch.manual_seed(0)
    card = ModelCard(alpha, "cifar", 32, classes, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                     training or {"epochs": 1, "recipe": "fast", "val_acc": 0.1}, tta=tta, data=data)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(path, MobileNetV1(len(classes), alpha), card)
    return card


def save_run(runs: Path, name: str, state: str = "finished") -> Path:
    folder = RunFolder(runs / name)
    save_model(folder.best, training={"epochs": 3, "recipe": "seed", "val_acc": 0.42, "data": "cifar10"})
    folder.set_status(RunState(state))
    return folder.path


STEPS_PER_EPOCH = 4


def metrics(epoch: int, epochs: int, accuracy: float) -> list[MetricsRow]:
    """An epoch's rows as the trainer writes them: a step row per step, then the epoch row."""
    rows = []
    for step in range((epoch - 1) * STEPS_PER_EPOCH + 1, epoch * STEPS_PER_EPOCH + 1):
        rows.append(MetricsRow("step", epoch, step, 2.0 / step, accuracy, 0.1 / step, 100.0, float(step),
                               float(epochs * STEPS_PER_EPOCH - step)))
    return rows + [MetricsRow("epoch", epoch, epoch * STEPS_PER_EPOCH, 1.0 / epoch, accuracy, 0.1, 100.0,
                              float(epoch), float(epochs - epoch), 1.5 / epoch, accuracy)]


def make_run(runs: Path, name: str, epochs: int = 3, state: str = "finished", updated: float = 0.0,
             **overrides) -> RunFolder:
    """A run folder as the trainer leaves it: config, metrics, status and, when finished, its report."""
    folder = RunFolder(runs / name)
    folder.write_config(TrainConfig(data="cifar10", alpha=0.25, epochs=epochs, **overrides))
    for epoch in range(1, epochs + 1):
        for row in metrics(epoch, epochs, accuracy=0.1 * epoch):
            folder.append_metrics(row)
    if state == "finished":
        write_report(folder, epochs)
    folder.status.write_text(json.dumps({"state": state, "updated": updated or time.time(), "epoch": epochs,
                                         "epochs": epochs}))
    return folder


def write_report(folder: RunFolder, epochs: int, classes: tuple[str, ...] = CIFAR10_CLASSES,
                 confusion: torch.Tensor | None = None) -> None:
    """A finished run's report.json, its best and last epoch's validation alike: one image of each class, all
    right, unless a confusion matrix is given."""
    confusion = torch.eye(len(classes), dtype=torch.int64) if confusion is None else confusion
    validation = Evaluation(tuple(classes), confusion, torch.empty(0, 0), torch.empty(0))
    report = RunReport(epochs, validation.accuracy, 60.0, "CPU", validation, validation)
    folder.write_json(folder.report, report.to_dict())


def isolate_app(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty checkpoint, runs and data folders of the test's own, and no cached results from other tests."""
    for name in ("checkpoints", "runs", "data"):
        (root / name).mkdir()
    monkeypatch.setenv("MOBILENET_CHECKPOINTS", str(root / "checkpoints"))
    monkeypatch.setenv("MOBILENET_RUNS", str(root / "runs"))
    monkeypatch.setenv("MOBILENET_DATA", str(root / "data"))
    st.cache_data.clear()
    st.cache_resource.clear()
    return root


def random_model(alpha: float = 0.25) -> MobileNetV1:
    """Seeded random weights with batch-norm statistics measured on random images, as training would leave them.

    Left at their initial values (mean 0, variance 1), the statistics shrink every input to the same output.
    """
    torch.manual_seed(0)
    model = MobileNetV1(len(CIFAR10_CLASSES), alpha)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batch
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    with torch.no_grad():
        model.train()(torch.randn(64, 3, 32, 32))
    return model.eval()


def save_random_checkpoint(path: Path, alpha: float = 0.25, flip_tta: bool = True) -> Path:
    norm = CIFAR10_NORMALIZATION
    card = ModelCard(alpha, "cifar", 32, CIFAR10_CLASSES, norm.mean, norm.std, tta="flip" if flip_tta else "none")
    checkpoint.save(path, random_model(alpha), card)
    return path


def image_bytes(seed: int = 0, size: tuple[int, int] = (48, 40), fmt: str = "PNG") -> bytes:
    """A noise image of that size, encoded."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def png(width: int, height: int, bit_depth: int = 8, color_type: int = 2, rows: bytes = b"") -> bytes:
    """A PNG written by hand, so its header can claim anything (rows: raw scanlines with filter bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows or b"\0" * 64))
            + chunk(b"IEND", b""))


Route = Callable[[BaseHTTPRequestHandler], None]


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", content_type: str = "image/png",
         headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


Route = Callable[[BaseHTTPRequestHandler], None]


def redirect(location: str) -> Route:
    return lambda h: send(h, 302, headers={"Location": location})


def trickle(prefix: bytes) -> Route:
    """A slow-loris: prefix, then a byte every 50 ms until the client hangs up (or 20 s)."""
    def route(h: BaseHTTPRequestHandler) -> None:
        try:
            h.wfile.write(prefix)
            for _ in range(400):
                h.wfile.write(b"x")
                time.sleep(0.05)
        except OSError:
            pass
    return route


SLOW_BODY = trickle(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
SLOW_HEADERS = trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ")


def endless(h: BaseHTTPRequestHandler) -> None:
    """An image/png body with no length that never ends (until the client hangs up)."""
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.end_headers()
    try:
        for _ in range(10_000):
            h.wfile.write(b"\0" * 65536)
    except OSError:
        pass


class Server:
    """An HTTP server on a loopback address serving `routes`, counting every connection and request."""

    def __init__(self, host: str = "127.0.0.1", routes: dict[str, Route] | None = None, port: int = 0) -> None:
        self.routes = routes or {}
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.requests.append((self.path, dict(self.headers)))
                outer.routes.get(self.path, lambda h: send(h, 404, b"not found", "text/plain"))(self)

            def log_message(self, *args) -> None:
                pass

        class Counting(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def get_request(self):  # every accepted connection, even one that never sends a request
                outer.connections += 1
                return super().get_request()

        self.httpd = Counting((host, port), Handler)
        self.host, self.port = host, self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str = "/", host: str | None = None) -> str:
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.port}{path}"

    @property
    def visited(self) -> bool:
        return self.connections > 0 or bool(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(predicate: Callable[[], object], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


class FakeClock:
    """A clock that moves only when told to: for rate limits and expiries without real waits."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m mobilenet ARGS` in this process: its exit code, stdout and stderr. (A process of its own costs
    seconds of imports; the tests that need one, for signals or the entry point, start it themselves.)"""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse: usage errors, --version
            code = exit.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
