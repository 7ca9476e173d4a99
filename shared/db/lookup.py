"""Reads behind the api's caches: what their failures mean, and the pause after an outage.

A database outage becomes :class:`DatabaseUnreachable` (the caches may answer from their stale
copy); any other database error :class:`LookupUnavailable`, which is not hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from shared.cache import TTLCache
from shared.db.engine import database_unreachable


class LookupUnavailable(Exception):
    """The database behind a cache miss could not answer."""


class DatabaseUnreachable(LookupUnavailable):
    """The database could not be reached at all (refused, reset, timed out): the caches may
    answer from their stale copy. Any other failure is not an outage, and is not hidden."""


def unavailable(exc: SQLAlchemyError) -> LookupUnavailable:
    """The lookup error for a database error: DatabaseUnreachable for an outage."""
    if database_unreachable(exc):
        return DatabaseUnreachable(str(exc))
    return LookupUnavailable(str(exc))


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Outage:
    """Shared by the key and the definition cache: once the database was found unreachable,
    their loaders fail at once for ``pause`` seconds. Without it a request whose key and
    definition both expired would wait for two timeouts, one after the other, and every new
    key for one each."""

    def __init__(self, pause: float) -> None:
        self._pause = pause
        self._until = 0.0

    def guard(self, load: Callable[[K], V]) -> Callable[[K], V]:
        def guarded(key: K) -> V:
            if time.monotonic() < self._until:
                raise DatabaseUnreachable("the database was unreachable moments ago")
            try:
                return load(key)
            except DatabaseUnreachable:
                self._until = time.monotonic() + self._pause
                raise

        return guarded


def cached(load: Callable[[K], V], *, ttl: float, stale: float = 0.0,
           outage: Outage | None = None) -> TTLCache[K, V]:
    """``load`` behind a TTL cache that answers from its stale copy for up to ``stale`` seconds
    while the database is unreachable, and pauses its loads after an outage (``outage``: a
    pause shared with other caches, so one request does not wait out two timeouts)."""
    return TTLCache((outage or Outage(ttl)).guard(load), ttl, stale=stale,
                    stale_on=(DatabaseUnreachable,))
