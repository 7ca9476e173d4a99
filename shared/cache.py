"""A small in-process TTL cache for the api's hot path (keys, event definitions)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """Remembers ``load(key)`` for ``ttl`` seconds, misses (None) included.

    Caching misses matters: without it every request with a wrong key would cost a database
    round trip, which turns a flood of bad keys into a database load test. Bounded in size: when
    full it is cleared, which is cheap and fine for a cache this small.
    """

    def __init__(self, load: Callable[[K], V], ttl: float, max_entries: int = 10_000) -> None:
        self._load = load
        self._ttl = ttl
        self._max = max_entries
        self._items: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V:
        now = time.monotonic()
        hit = self._items.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = self._load(key)
        with self._lock:
            if len(self._items) >= self._max:
                self._items.clear()
            self._items[key] = (now + self._ttl, value)
        return value
