"""A small memo shared by a server's threads: what a page run learnt once (a refusal, a summary) for every visitor."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    """A thread-safe map that keeps its newest `size` entries; with `max_age_s`, an older entry is forgotten (asked
    again), so that something remembered as failed is tried again once it may have passed."""

    def __init__(self, size: int, max_age_s: float | None = None) -> None:
        if size < 1:
            raise ValueError(f"a memo keeps at least one entry, not {size}")
        self.size = size
        self.max_age_s = max_age_s
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or (self.max_age_s is not None and time.monotonic() - entry[0] >= self.max_age_s):
            return None
        return entry[1]

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = time.monotonic(), value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class KeyLocks:
    """A lock per key, so that threads asking at once for one costly answer compute it once: the others wait, then
    find it cached. Different keys do not wait for each other. Keys are never forgotten: use few (a data source)."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def __call__(self, key: Hashable) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())
