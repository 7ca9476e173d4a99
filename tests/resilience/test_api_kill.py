"""api processes killed (SIGKILL) while events stream in (DESIGN 6).

gunicorn starts a new process for each one killed; a request that died with its process got no
answer, so it was not acknowledged and its caller would send it again. Every event answered
1002 must become exactly one request: lost, duplicated and stuck 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Worker, load_demo, throwaway_database, wait_until
from tests.resilience.harness import Api, Stream, broker, service_env, settle

pytestmark = [pytest.mark.resilience, pytest.mark.postgres]

EVENTS = 6000
THREADS = 8
# Paced, so that gunicorn has replaced each killed process before the next kill is due.
STREAM_SECONDS = 15.0
KILLS = 5
API_PROCESSES = 2


@pytest.mark.parametrize("kind", ["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def test_events_acknowledged_by_killed_api_processes_are_processed(
    kind: str, tmp_path: Path
) -> None:
    with (throwaway_database("eventdesk_apikill") as database,
          broker(kind, tmp_path / "broker") as url):
        load_demo(database)
        env = service_env(url, database)
        worker = Worker(env, tmp_path / "worker.log")
        api = Api(env, tmp_path / "api.log", workers=API_PROCESSES)
        try:
            stream = Stream(api.port)
            killed = kill_while_streaming(api, stream)
            tally, seconds = settle(database, stream, 90)
        finally:
            api.stop()
            worker.stop()

    print(f"\n{kind}: {len(killed)} api processes killed: {tally}; refused {stream.refused}; "
          f"all done {seconds:.1f} s after the stream ended")
    assert len(killed) == KILLS
    assert stream.sent == EVENTS
    # Some requests must have died with their process, or the kills proved nothing.
    assert stream.refused.get("no answer", 0) > 0
    assert set(stream.refused) <= {"no answer"}
    assert tally.all_done_once(), tally


def kill_while_streaming(api: Api, stream: Stream) -> list[int]:
    """Stream EVENTS events; each time another EVENTS / (KILLS + 1) have been sent, SIGKILL an
    api process and wait for gunicorn's replacement. The pids killed."""
    killed: list[int] = []
    done = threading.Event()
    per_thread = -(-EVENTS // THREADS)
    started = time.monotonic()

    def pace(number: int) -> None:
        delay = started + (number % per_thread) * STREAM_SECONDS / per_thread - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def killer() -> None:
        def due(kill: int) -> Callable[[], bool]:
            return lambda: stream.sent >= kill * EVENTS // (KILLS + 1) or done.is_set()

        for kill in range(1, KILLS + 1):
            wait_until(due(kill), 120, 0.01)
            if done.is_set():
                return
            victim = api.workers()[kill % API_PROCESSES]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            wait_until(lambda: len(set(api.workers()) - set(killed)) == API_PROCESSES, 30, 0.05)

    thread = threading.Thread(target=killer, name="killer")
    thread.start()
    try:
        stream.post(EVENTS, threads=THREADS, between=pace)
    finally:
        done.set()
        thread.join()
    return killed
