"""Where the data, the shipped models and the training runs live: read from the environment when asked.

Nothing is frozen at import time, so a test or a host can point any of them elsewhere at any moment.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """CIFAR-10 downloads, image folders and zips to evaluate on, and the decode cache (MOBILENET_DATA)."""
    return Path(os.environ.get("MOBILENET_DATA", "data"))


def checkpoint_dir() -> Path:
    """The shipped models (MOBILENET_CHECKPOINTS; default: checkpoints/ beside the package)."""
    return Path(os.environ.get("MOBILENET_CHECKPOINTS", PACKAGE_ROOT / "checkpoints"))


def runs_dir() -> Path:
    """Training run folders, the app's and the command line's alike (MOBILENET_RUNS)."""
    return Path(os.environ.get("MOBILENET_RUNS", "runs"))


def job_threads() -> int:
    """CPU threads of a training job started from the app (MOBILENET_JOB_THREADS): all cores but one for the server."""
    value = os.environ.get("MOBILENET_JOB_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else max(1, (os.cpu_count() or 1) - 1)


def job_nice() -> int:
    """How much a training job started from the app yields the CPU to visitors (MOBILENET_JOB_NICE, 0-19)."""
    value = os.environ.get("MOBILENET_JOB_NICE", "")
    return min(int(value), 19) if value.isdigit() else 10
