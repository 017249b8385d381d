"""Shared fixtures: small generated datasets in every layout the data module reads."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ("cat", "dog", "ship")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Classifier.load sets torch's threads for the process on CPU: no test leaves that to the next."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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


def zip_folder(folder: Path, target: Path, top: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{top}{path.relative_to(folder).as_posix()}")
    return target


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "images")


def write_cifar_archive(target: Path, per_batch: int = 20) -> dict[str, str]:
    """A cifar-10-python.tar.gz in the real layout; returns the md5 of each member for torchvision's checks."""
    import hashlib

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
