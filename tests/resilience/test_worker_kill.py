"""Workers SIGKILLed again and again while events stream in: nothing acknowledged is lost,
duplicated or stuck, on Redis and on RabbitMQ.

Two workers share the queue; a killer thread SIGKILLs one (its whole process group: the main
process and its pool, as a container runtime or the OOM killer does) or only its pool
processes, and starts a new one, while the stream goes on.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Worker, load_demo, throwaway_database
from tests.resilience.harness import Api, Stream, broker, paced, service_env, settle
from tests.test_crash import children

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
    workers = [Worker(env, tmp_path / f"worker-{n}.log", queues="events", new_session=True)
               for n in range(2)]
    api = Api(env, tmp_path / "api.log")
    done = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        turn = 0
        while not done.wait(1.0):
            victim = workers[turn % 2]
            if what == "whole worker":
                os.killpg(victim.proc.pid, signal.SIGKILL)
                victim.proc.wait()
                victim.stop()
                workers[turn % 2] = Worker(env, tmp_path / f"worker-{turn}-new.log",
                                           queues="events", new_session=True)
            else:
                for pid in children(victim.proc.pid):
                    os.kill(pid, signal.SIGKILL)
            kills += 1
            turn += 1

    thread = threading.Thread(target=killer)
    stream = Stream(api.port)
    try:
        thread.start()
        stream.post(EVENTS, between=paced(RATE, 8))
        done.set()
        thread.join()
        result, took = settle(database, stream, 120)
        print(f"\n{what} killed {kills} times: {result}; all finished {took:.1f} s after the"
              " stream")
        assert kills >= 3
        assert result.acknowledged == EVENTS
        assert result.all_done_once(), result
    finally:
        done.set()
        thread.join()
        api.stop()
        for worker in workers:
            worker.stop()
