"""Workers SIGKILLed again and again while events stream in: nothing acknowledged is lost,
duplicated or stuck, on Redis and on RabbitMQ.

Two workers share the queue; a killer thread SIGKILLs one (its whole process group: the main
process and its pool, as a container runtime or the OOM killer does) or only its pool
processes, and starts a new one, while the stream goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import load_demo, throwaway_database
from tests.resilience.harness import (
    Api,
    Stream,
    WorkerKiller,
    broker,
    paced,
    service_env,
    settle,
)

pytestmark = [pytest.mark.resilience, pytest.mark.postgres]

EVENTS = 5000
RATE = 400  # events a second: the stream lasts long enough for several kills


@pytest.fixture(params=["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    with throwaway_database("eventdesk_kill") as database, \
            broker(request.param, tmp_path / "broker") as url:
        load_demo(database)
        yield service_env(url, database), database


@pytest.mark.parametrize("what", ["whole worker", "pool processes"])
def test_workers_killed_mid_stream(
    stack: tuple[dict[str, str], str], what: str, tmp_path: Path
) -> None:
    env, database = stack
    killer = WorkerKiller(env, tmp_path, "events", whole=what == "whole worker", every=1.0)
    api = Api(env, tmp_path / "api.log")
    stream = Stream(api.port)
    try:
        killer.start()
        stream.post(EVENTS, between=paced(RATE, 8))
        killer.stop()
        result, took = settle(database, stream, 120)
        print(f"\n{what} killed {killer.kills} times: {result}; all finished {took:.1f} s after"
              " the stream")
        assert killer.kills >= 3
        assert result.acknowledged == EVENTS
        assert result.all_done_once(), result
    finally:
        api.stop()
        killer.close()
