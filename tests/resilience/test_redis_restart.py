"""The broker itself is SIGKILLed mid-stream and restarted: with AOF (``appendfsync always``)
every event answered 1002 is still processed, once; while Redis is down the api answers 7005
and writes nothing."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import Worker, load_demo, throwaway_database, wait_until
from tests.resilience.harness import Api, Stream, paced, private_redis, service_env, settle

pytestmark = [pytest.mark.resilience, pytest.mark.postgres]

EVENTS = 5000


def sent_at_least(stream: Stream, count: int) -> bool:
    return stream.sent >= count


def refused_more_than(stream: Stream, count: int) -> bool:
    return stream.refused.get("7005", 0) > count


def test_redis_killed_and_restarted_mid_stream(tmp_path: Path) -> None:
    with throwaway_database("eventdesk_redis_kill") as database, \
            private_redis(tmp_path / "redis") as redis_server:
        load_demo(database)
        env = service_env(redis_server.url, database)
        worker = Worker(env, tmp_path / "worker.log", queues="events")
        api = Api(env, tmp_path / "api.log")
        stream = Stream(api.port)
        restarts = 0

        def kill_and_restart() -> None:
            nonlocal restarts
            for third in (1, 2):
                wait_until(partial(sent_at_least, stream, third * EVENTS // 3), 60, 0.05)
                refused = stream.refused.get("7005", 0)
                redis_server.kill()
                # Down until the api has felt it, then back on the same port and AOF file.
                wait_until(partial(refused_more_than, stream, refused), 30, 0.05)
                redis_server.start()
                restarts += 1

        chaos = threading.Thread(target=kill_and_restart)
        try:
            chaos.start()
            stream.post(EVENTS, between=paced(500, 8))
            chaos.join()
            result, took = settle(database, stream, 120)
            print(f"\nRedis killed and restarted {restarts} times: {result}; refused "
                  f"{stream.refused}; all finished {took:.1f} s after the stream")
            assert restarts == 2
            assert set(stream.refused) <= {"7005"}
            assert result.acknowledged >= EVENTS * 0.9
            assert result.all_done_once(), result
        finally:
            chaos.join()
            api.stop()
            worker.stop()
