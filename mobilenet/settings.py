"""Where the data, the shipped models and the training runs live: read from the environment when asked.

Nothing is frozen at import time, so a test or a host can point any of them elsewhere at any moment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD_ENV = "MOBILENET_ADMIN_PASSWORD"
ALLOW_PRIVATE_URLS_ENV = "MOBILENET_ALLOW_PRIVATE_URLS"
log = logging.getLogger(__name__)


def _setting(name: str) -> str | None:
    """A variable of the environment; one set empty (or to spaces, as an env file may) counts as unset."""
    return os.environ.get(name, "").strip() or None


def _whole_number(name: str, default: int, least: int, most: int) -> int:
    """A whole-number setting; a value that is none, or out of range, is named in the server log and not used."""
    value = _setting(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        log.warning("%s=%r is not a whole number: %d is used", name, value, default)
        return default
    if not least <= number <= most:
        log.warning("%s=%r is out of range (%d to %d): %d is used", name, value, least, most, default)
        return default
    return number


def data_root() -> Path:
    """CIFAR-10 downloads, image folders and zips to evaluate on, and the decode cache (MOBILENET_DATA)."""
    return Path(_setting("MOBILENET_DATA") or "data")


def checkpoint_dir() -> Path:
    """The shipped models (MOBILENET_CHECKPOINTS; default: checkpoints/ beside the package)."""
    return Path(_setting("MOBILENET_CHECKPOINTS") or PACKAGE_ROOT / "checkpoints")


def runs_dir() -> Path:
    """Training run folders, the app's and the command line's alike (MOBILENET_RUNS)."""
    return Path(_setting("MOBILENET_RUNS") or "runs")


def job_threads() -> int:
    """CPU threads of a training job started from the app (MOBILENET_JOB_THREADS): all cores but one for the server."""
    return _whole_number("MOBILENET_JOB_THREADS", max(1, (os.cpu_count() or 1) - 1), 1, 4096)


def job_nice() -> int:
    """How much a training job started from the app yields the CPU to visitors (MOBILENET_JOB_NICE, 0-19)."""
    return _whole_number("MOBILENET_JOB_NICE", 10, 0, 19)


def admin_password() -> str | None:
    """The admin password of MOBILENET_ADMIN_PASSWORD, or None (admin.admin_password also asks the Streamlit secret)."""
    return _setting(ADMIN_PASSWORD_ENV)


def private_urls_allowed() -> bool:
    """The trusted-local-install setting: MOBILENET_ALLOW_PRIVATE_URLS=1 (off unless set)."""
    return (_setting(ALLOW_PRIVATE_URLS_ENV) or "").lower() in ("1", "true", "yes")
