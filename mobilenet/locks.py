"""Locks the kernel releases when their holder dies (flock), and keeping them from child processes."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


# is_locked's shared probes (every watcher's page, each refresh) hold a lock for microseconds: a free lock is
# tried again for this long before it counts as held, so that a probe at that instant refuses no one.
PROBE_WAIT_S = 0.1


def try_lock(path: Path) -> int | None:
    """An fd holding the exclusive lock on path (created if need be), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + PROBE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.005)


@contextmanager
def waiting_lock(path: Path) -> Iterator[bool]:
    """Hold the exclusive lock on path (created, with its folder, if need be), waiting for it; yields False when
    the lock file cannot be opened, so that the caller goes on unlocked."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether a process holds the lock; a shared probe that needs no write access and creates nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


_kept_from_children: set[int] = set()


def _close_kept_fds() -> None:
    for fd in _kept_from_children:
        try:
            os.close(fd)
        except OSError:
            pass
    _kept_from_children.clear()


os.register_at_fork(after_in_child=_close_kept_fds)


def keep_from_children(fd: int) -> None:
    """No child ever holds fd (nor a lock on it): closed on exec, and at once in every forked child.

    Forked data-decode workers would otherwise keep a dead trainer's locks for as long as they live.
    """
    os.set_inheritable(fd, False)
    _kept_from_children.add(fd)


def release_kept(fd: int) -> None:
    _kept_from_children.discard(fd)
    os.close(fd)
