"""The api's TTL cache: fresh answers, misses, and the stale copy it serves while the database is
unreachable (DESIGN 6)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from shared.cache import TTLCache


class Down(Exception):
    """The loader's "database unreachable"."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Answers from ``answers`` and counts its calls; raises ``fail`` when it is set."""

    def __init__(self, answers: dict[str, str | None]) -> None:
        self.answers = answers
        self.calls = 0
        self.fail: Exception | None = None

    def __call__(self, key: str) -> str | None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return self.answers.get(key)


def make(loader: Callable[[str], str | None], clock: Clock,
         stale: float = 300.0) -> TTLCache[str, str | None]:
    return TTLCache(loader, 5.0, stale=stale, stale_on=(Down,), clock=clock)


def test_answers_and_misses_are_kept_for_the_ttl() -> None:
    clock, loader = Clock(), Loader({"k": "info"})
    cache = make(loader, clock)
    assert [cache.get("k"), cache.get("k"), cache.get("x"), cache.get("x")] == [
        "info", "info", None, None]
    assert loader.calls == 2
    clock.now += 5.1
    assert cache.get("k") == "info"
    assert loader.calls == 3


def test_peek_answers_only_what_is_fresh_and_never_loads() -> None:
    """For a caller that must not wait on the database (the SMTP listener's event loop)."""
    clock, loader = Clock(), Loader({"k": "info"})
    cache = make(loader, clock)
    assert cache.peek("k") is None
    assert loader.calls == 0
    cache.get("k")
    assert cache.peek("k") == "info"
    clock.now += 5.1
    assert cache.peek("k") is None
    assert loader.calls == 1


def test_database_down_serves_the_last_answer_until_the_stale_window_ends() -> None:
    clock, loader = Clock(), Loader({"k": "info"})
    cache = make(loader, clock)
    cache.get("k")
    loader.fail = Down("connection refused")
    clock.now += 5.1
    assert cache.get("k") == "info"
    assert loader.calls == 2
    # After a failed refresh it waits a TTL before asking the database again.
    assert cache.get("k") == "info"
    assert loader.calls == 2
    clock.now += 5.1
    assert cache.get("k") == "info"
    assert loader.calls == 3
    clock.now = 1000.0 + 5 + 300 + 0.1  # the answer was loaded at 1000
    with pytest.raises(Down):
        cache.get("k")


def test_database_back_replaces_the_stale_copy() -> None:
    clock, loader = Clock(), Loader({"k": "info"})
    cache = make(loader, clock)
    cache.get("k")
    loader.fail = Down()
    clock.now += 6
    assert cache.get("k") == "info"
    loader.fail = None
    loader.answers["k"] = None  # revoked meanwhile
    clock.now += 6
    assert cache.get("k") is None


def test_a_revoked_key_stays_refused_while_the_database_is_down() -> None:
    clock, loader = Clock(), Loader({"k": "info"})
    cache = make(loader, clock)
    cache.get("k")
    clock.now += 6
    loader.answers["k"] = None
    assert cache.get("k") is None
    loader.fail = Down()
    clock.now += 6
    assert cache.get("k") is None


def test_no_stale_copy_for_other_errors_or_cold_misses() -> None:
    clock, loader = Clock(), Loader({"k": "info"})
    cache = make(loader, clock)
    cache.get("k")
    clock.now += 6
    loader.fail = ValueError("a bug, not an outage")
    with pytest.raises(ValueError, match="a bug"):
        cache.get("k")
    loader.fail = Down()
    with pytest.raises(Down):
        cache.get("never-seen")


def test_without_a_stale_window_an_outage_is_an_error() -> None:
    clock, loader = Clock(), Loader({"k": "info"})
    cache = make(loader, clock, stale=0)
    cache.get("k")
    clock.now += 6
    loader.fail = Down()
    with pytest.raises(Down):
        cache.get("k")


def test_while_one_thread_refreshes_the_others_serve_the_expired_answer() -> None:
    clock = Clock()
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow(key: str) -> str:
        calls.append(key)
        if len(calls) > 1:
            entered.set()
            release.wait(10)
        return f"v{len(calls)}"

    cache: TTLCache[str, str] = TTLCache(slow, 5.0, stale=300, stale_on=(Down,), clock=clock)
    assert cache.get("k") == "v1"
    clock.now += 6
    refresher = threading.Thread(target=cache.get, args=("k",))
    refresher.start()
    assert entered.wait(10)
    assert [cache.get("k") for _ in range(5)] == ["v1"] * 5
    release.set()
    refresher.join(10)
    assert cache.get("k") == "v2"
    assert len(calls) == 2
