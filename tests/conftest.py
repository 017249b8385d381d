"""Fixtures shared by every test file; what they build comes from helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import write_folder


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Classifier.load sets torch's threads for the process on CPU: no test leaves that to the next."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> None:
    """The training tests' accuracy thresholds and bitwise comparisons hold with one intra-op thread; two change
    the float sums (keep_torch_threads restores the count)."""
    torch.set_num_threads(1)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "images")
