"""Broker connection resets of about a second, seen by the worker only: nothing lost, nothing stuck.

The worker reaches its broker through a :class:`TcpProxy`; the api talks to the broker directly,
so it keeps accepting while the worker's connection is cut. Two phases:

- a stream of events with the worker's connection cut for a second, three times, mid-stream;
- then a small final group, cut once the worker holds it in its batch buffer and no further
  message is coming. This is the case issue 9 found stuck: Celery clears its event loop's timers
  on a connection error, and the batch's time-based flush never came back (worker/events.py).

The batch wait is raised to one second so that "held in the buffer" is a state the test can
reach on purpose rather than a 0.1 s race; the flush timer's behaviour does not depend on it.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import redis
from kombu import Connection

from tests.conftest import Worker, load_demo, throwaway_database, wait_until
from tests.resilience.harness import Api, Count, Stream, count, private_redis, service_env, settle
from tests.resilience.proxy import TcpProxy

pytestmark = [pytest.mark.resilience, pytest.mark.postgres]

STREAM = 5_000
CUT_AT = (1_000, 2_500, 4_000)  # events sent when the worker's connection is cut
CUT_SECONDS = 1.0
FINAL_GROUP = 30
BATCH_WAIT = 1.0
SETTLE_TIMEOUT = 30.0


@contextmanager
def rabbitmq_vhost() -> Iterator[tuple[str, int]]:
    """A vhost of its own (a uuid, so concurrent runs never share one): its path and port."""
    vhost = f"eventdesk-blip-{uuid.uuid4().hex[:12]}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)

    ctl("add_vhost", vhost)
    try:
        ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost, 5672
    finally:
        ctl("delete_vhost", vhost)


@contextmanager
def broker_behind_proxy(kind: str, folder: Path) -> Iterator[tuple[str, str, TcpProxy]]:
    """The api's broker URL (direct), the worker's (through the proxy), and the proxy."""
    if kind == "redis":
        with private_redis(folder) as server, TcpProxy(server.port) as proxy:
            yield server.url, f"redis://127.0.0.1:{proxy.port}/0", proxy
    else:
        with rabbitmq_vhost() as (vhost, port), TcpProxy(port) as proxy:
            yield (f"amqp://guest:guest@127.0.0.1:{port}/{vhost}",
                   f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}", proxy)


def waiting(kind: str, broker: str) -> int:
    """Messages in the events queue not yet delivered to a consumer."""
    if kind == "redis":  # an empty list is no key at all, which a passive declare refuses
        return int(redis.Redis.from_url(broker).llen("events"))
    with Connection(broker) as connection:
        _, ready, _ = connection.default_channel.queue_declare("events", passive=True)
        return int(ready)


def sent_at_least(stream: Stream, number: int) -> bool:
    return stream.sent >= number


def blip(proxy: TcpProxy) -> None:
    proxy.cut()
    time.sleep(CUT_SECONDS)  # the length of the outage, not a wait for anything
    proxy.restore()


def report(phase: str, kind: str, result: Count, seconds: float, worker: Worker) -> None:
    print(f"\n{kind} {phase}: {result}; settled in {seconds:.1f} s")
    if result.stuck or result.lost or result.completed != result.acknowledged:
        lines = worker.log.read_text().splitlines()
        print("\n".join(line[:300] for line in lines if '"processed"' not in line)[-6000:])


@pytest.mark.parametrize("kind", ["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def test_broker_blips_lose_nothing_and_strand_nothing(kind: str, tmp_path: Path) -> None:
    with throwaway_database("eventdesk_blip") as database, \
            broker_behind_proxy(kind, tmp_path / "redis") as (direct, proxied, proxy):
        load_demo(database)
        worker = Worker(service_env(proxied, database,
                                    EVENTDESK_WORKER_BATCH_WAIT_SECONDS=str(BATCH_WAIT)),
                        tmp_path / "worker.log", queues="events")
        api = Api(service_env(direct, database), tmp_path / "api.log")
        try:
            stream = Stream(api.port)

            def cuts() -> None:
                for at in CUT_AT:
                    wait_until(partial(sent_at_least, stream, at), 120, 0.01)
                    blip(proxy)

            cutter = threading.Thread(target=cuts, name="cutter")
            cutter.start()
            stream.post(STREAM)
            cutter.join()
            streamed, seconds = settle(database, stream, SETTLE_TIMEOUT)
            report("stream with 3 cuts", kind, streamed, seconds, worker)

            # The final group: delivered to the worker, sitting in its batch buffer, then cut.
            final = Stream(api.port, run=f"{stream.run}-final")
            final.post(FINAL_GROUP, threads=3)
            wait_until(lambda: waiting(kind, direct) == 0, 10, 0.01)
            held = count(database, final)
            blip(proxy)
            result, seconds = settle(database, final, SETTLE_TIMEOUT)
            report("final group cut in the buffer", kind, result, seconds, worker)
            assert held.completed < result.acknowledged, "the final group was done before the cut"
            assert result.lost == result.duplicated == result.stuck == 0, result
            assert result.completed == result.acknowledged == FINAL_GROUP, result

            assert streamed.lost == streamed.duplicated == streamed.stuck == 0, streamed
            assert streamed.completed == streamed.acknowledged >= STREAM * 0.9, streamed
        finally:
            api.stop()
            worker.stop()
