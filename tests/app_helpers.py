"""Helpers for the app's tests: random-weight checkpoints and image bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image

from mobilenet import checkpoint
from mobilenet.checkpoint import ModelCard, TrainingData
from mobilenet.data import CIFAR10_CLASSES
from mobilenet.model import MobileNetV1


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
    folder = runs / name
    save_model(folder / "best.pt", training={"epochs": 3, "recipe": "seed", "val_acc": 0.42, "data": "cifar10"})
    (folder / "status.json").write_text(json.dumps({"state": state}))
    return folder


def image_bytes(width: int = 200, height: int = 150, seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


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
