"""A small in-process TTL cache for the api's hot path (keys, event definitions)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class _Entry(Generic[V]):
    value: V
    fresh_until: float
    stale_until: float


class TTLCache(Generic[K, V]):
    """Remembers ``load(key)`` for ``ttl`` seconds, misses (None) included.

    Caching misses matters: without it every request with a wrong key would cost a database
    round trip, which turns a flood of bad keys into a database load test. Bounded in size: when
    full it is cleared, which is cheap and fine for a cache this small.

    When ``load`` raises one of ``stale_on`` (the database is unreachable), the last answer is
    served for up to ``stale`` seconds past its TTL, so an outage of the database does not stop
    the intake for keys and definitions it already knew. Only an answer the loader gave is ever
    served stale, a miss as a miss: a key the database last called unknown or revoked stays
    refused, and a fresh answer always replaces the stale one. After a failed refresh the stale
    answer is served for another ``ttl`` before the next try, so a dead database costs one
    waiting request per key and TTL, not every request.

    While one thread refreshes an expired entry that is still within its stale window, the others
    serve the expired answer instead of all asking the database at once (with ``stale`` 0 every
    caller of an expired entry loads it).
    """

    def __init__(
        self,
        load: Callable[[K], V],
        ttl: float,
        max_entries: int = 10_000,
        *,
        stale: float = 0.0,
        stale_on: tuple[type[Exception], ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._max = max_entries
        self._stale = stale
        self._stale_on = stale_on
        self._clock = clock
        self._items: dict[K, _Entry[V]] = {}
        self._refreshing: set[K] = set()
        self._lock = threading.Lock()

    def get(self, key: K) -> V:
        now = self._clock()
        entry = self._items.get(key)
        if entry is not None and entry.fresh_until > now:
            return entry.value
        usable = entry if entry is not None and entry.stale_until > now else None
        with self._lock:
            if usable is not None and key in self._refreshing:
                return usable.value
            self._refreshing.add(key)
        try:
            return self._refresh(key, usable)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def peek(self, key: K) -> V | None:
        """The fresh answer for ``key`` if there is one, without loading it: None when
        :meth:`get` would ask the loader, or serve a stale copy (for a caller that must not
        wait on it, and whose loader never answers None: a cached miss reads as None too)."""
        entry = self._items.get(key)
        return entry.value if entry is not None and entry.fresh_until > self._clock() else None

    def _refresh(self, key: K, usable: _Entry[V] | None) -> V:
        try:
            value = self._load(key)
        except self._stale_on:
            if usable is None:
                raise
            retry = min(self._clock() + self._ttl, usable.stale_until)
            entry = _Entry(usable.value, retry, usable.stale_until)
        else:
            loaded = self._clock()
            entry = _Entry(value, loaded + self._ttl, loaded + self._ttl + self._stale)
        with self._lock:
            if len(self._items) >= self._max:
                self._items.clear()
            self._items[key] = entry
        return entry.value
