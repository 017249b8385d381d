"""Inference test helpers: a random-weight checkpoint, image bytes, loopback HTTP servers that record visits."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from mobilenet import checkpoint
from mobilenet.checkpoint import ModelCard
from mobilenet.data import CIFAR10_CLASSES
from mobilenet.tta import CIFAR10_NORMALIZATION
from mobilenet.model import MobileNetV1


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


def image_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "PNG") -> bytes:
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
