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
    """An fd holding the exclusive lock on path (created if need be), or None when another process holds it. The fd
    is kept from forked children (keep_from_children): close it with release_kept."""
    fd = _open_kept(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + PROBE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                release_kept(fd)
                return None
            time.sleep(0.005)


def _open_kept(path: Path, flags: int, mode: int = 0o644) -> int:
    """A lock file opened for this process alone: a child forked while it is open (a page's decode workers) would
    otherwise hold its lock, shared or exclusive, for as long as it lives."""
    fd = os.open(path, flags | os.O_CLOEXEC, mode)
    keep_from_children(fd)
    return fd


@contextmanager
def waiting_lock(path: Path) -> Iterator[bool]:
    """Hold the exclusive lock on path (created, with its folder, if need be), waiting for it; yields False when
    the lock file cannot be opened, so that the caller goes on unlocked."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_kept(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        release_kept(fd)


def is_locked(path: Path) -> bool:
    """Whether a process holds the lock; a shared probe that needs no write access and creates nothing."""
    try:
        fd = _open_kept(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        release_kept(fd)


# The fds kept from children, with the file each was open on: a number closed without release_kept and reused for
# another file is left alone in the child.
_kept_from_children: dict[int, tuple[int, int]] = {}


def _close_kept_fds() -> None:
    for fd, file in list(_kept_from_children.items()):
        try:
            if _identity(fd) == file:
                os.close(fd)
        except OSError:
            pass
    _kept_from_children.clear()


os.register_at_fork(after_in_child=_close_kept_fds)


def _identity(fd: int) -> tuple[int, int]:
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def keep_from_children(fd: int) -> None:
    """No child ever holds fd (nor a lock on it): closed on exec, and at once in every forked child.

    Forked data-decode workers would otherwise keep a dead trainer's locks for as long as they live.
    """
    os.set_inheritable(fd, False)
    _kept_from_children[fd] = _identity(fd)


def release_kept(fd: int) -> None:
    _kept_from_children.pop(fd, None)
    os.close(fd)
