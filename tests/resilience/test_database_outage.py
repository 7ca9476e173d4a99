"""PostgreSQL goes away for 30 s in the middle of a stream of events (DESIGN 6).

The api keeps accepting events from the key and definition it knows (its stale cache), and no
request waits long (connect and statement timeouts); the worker puts its batches back and
processes them once the database is back: nothing acknowledged is lost, duplicated or stuck.
``cut`` resets every connection (a restart); ``blackhole`` answers nothing (a dropped route).

RESILIENCE_OUTAGE_SECONDS shortens the outage (default 30) when a quicker run is wanted.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Worker, load_demo, throwaway_database
from tests.resilience.harness import Api, Stream, broker, service_env, settle
from tests.resilience.proxy import TcpProxy

pytestmark = [pytest.mark.resilience, pytest.mark.postgres]

OUTAGE = float(os.environ.get("RESILIENCE_OUTAGE_SECONDS", "30"))
LEAD = 5.0  # seconds of stream before the outage and after it
EVENTS = 5000
THREADS = 8
# A request may pay one pre-ping that times out (statement timeout 3 s + 0.5 s) and one connect
# that times out (2 s); anything near the outage's length would mean a hang.
LATENCY_LIMIT = 7.0


@pytest.mark.parametrize(("fault", "kind"), [
    ("cut", "redis"), ("blackhole", "redis"),
    pytest.param("cut", "rabbitmq", marks=pytest.mark.rabbitmq),
])
def test_intake_rides_out_a_database_outage(fault: str, kind: str, tmp_path: Path) -> None:
    with (throwaway_database("eventdesk_outage") as database,
          broker(kind, tmp_path / "broker") as url, TcpProxy(5432) as proxy):
        load_demo(database)
        env = service_env(url, database.replace(":5432/", f":{proxy.port}/"))
        worker = Worker(env, tmp_path / "worker.log")
        api = Api(env, tmp_path / "api.log")
        try:
            stream = Stream(api.port)
            # Many connections, so every api process has the key and the definition cached.
            stream.post(4 * THREADS, threads=4 * THREADS, start=EVENTS)
            assert stream.refused == {}
            window = run_with_outage(stream, proxy, fault)
            tally, _ = settle(database, stream, 90)
            recovery = time.monotonic() - window[1]
        finally:
            api.stop()
            worker.stop()

    during = [code for sent, _, code in stream.answers if window[0] <= sent < window[1]]
    share = during.count("1002") / len(during)
    slowest = max(seconds for _, seconds, _ in stream.answers)
    print(f"\n{kind}, {fault} {OUTAGE:.0f} s: {tally}; refused {stream.refused}; during the outage "
          f"{during.count('1002')}/{len(during)} answered 1002 ({share:.2%}); slowest request "
          f"{slowest:.2f} s; all done {recovery:.1f} s after the database came back")
    assert stream.sent >= EVENTS
    assert share >= 0.99
    assert slowest < LATENCY_LIMIT
    assert tally.all_done_once(), tally


def run_with_outage(stream: Stream, proxy: TcpProxy, fault: str) -> tuple[float, float]:
    """Stream EVENTS events evenly over LEAD + OUTAGE + LEAD seconds, with the database cut or
    black-holed from LEAD to LEAD + OUTAGE; the outage's (start, end) in time.monotonic()."""
    per_thread = -(-EVENTS // THREADS)
    spacing = (2 * LEAD + OUTAGE) / per_thread
    started = time.monotonic()
    window: list[float] = []

    def pace(number: int) -> None:
        delay = started + (number % per_thread) * spacing - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def outage() -> None:
        time.sleep(LEAD)
        getattr(proxy, fault)()
        window.append(time.monotonic())
        time.sleep(OUTAGE)
        proxy.restore()
        window.append(time.monotonic())

    injector = threading.Thread(target=outage, name="outage")
    injector.start()
    stream.post(EVENTS, threads=THREADS, between=pace)
    injector.join()
    return window[0], window[1]
