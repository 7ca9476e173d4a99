"""``eventdesk purge`` run again and again while events stream through a real api and worker
(PostgreSQL, a private Redis): the intake keeps accepting every event (no 7005), the worker
keeps up, and in the end every finished transaction is gone while every request stays."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shared.db.engine import session_scope
from shared.db.models import Note, Request, Transaction
from tests.conftest import REPO, Worker, load_demo, throwaway_database, wait_until
from tests.resilience.harness import Api, Stream, paced, private_redis, service_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

EVENTS = 3000
RATE = 300  # events a second: ten seconds of stream, through many purges


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with throwaway_database("eventdesk_purge_load") as database, \
            private_redis(tmp_path / "redis", aof=False) as redis_server:
        load_demo(database)
        yield service_env(redis_server.url, database)


def purge(env: dict[str, str], older_than: str) -> dict[str, int]:
    """``eventdesk purge`` as an operator runs it; the counts it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "purge", "--older-than", older_than],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
        check=True,
    )
    lines = [line.split(": ") for line in done.stdout.splitlines() if " removed" in line]
    return {table: int(text.split()[0]) for table, text in lines}


def requests_of(database: str, stream: Stream) -> int:
    with session_scope(database) as session:
        return session.scalar(select(func.count()).select_from(Request).where(
            Request.source_id.like(f"{stream.run}-%"))) or 0


def test_purge_during_a_load_run(env: dict[str, str], tmp_path: Path) -> None:
    database = env["EVENTDESK_DATABASE_URL"]
    worker = Worker(env, tmp_path / "worker.log", queues="events")
    api = Api(env, tmp_path / "api.log")
    try:
        stream = Stream(api.port)
        stream_over = threading.Event()
        purged: list[int] = []

        def purge_again_and_again() -> None:
            while not stream_over.is_set():
                purged.append(purge(env, "1s")["transactions"])

        purger = threading.Thread(target=purge_again_and_again)
        purger.start()
        try:
            stream.post(EVENTS, between=paced(RATE, 8))
            ended = time.monotonic()
            # Every event becomes its request (requests stay): the worker kept up meanwhile.
            wait_until(lambda: requests_of(database, stream) >= EVENTS, timeout=30,
                       interval=0.1)
            drained = time.monotonic() - ended
        finally:
            stream_over.set()
            purger.join()
        assert stream.refused == {}, f"the intake refused events during purges: {stream.refused}"
        assert len(stream.acknowledged) == EVENTS
        assert len(purged) >= 3, "the purges ran beside the stream"
        assert sum(purged) > 0
        assert drained < 10, f"the worker fell {drained:.1f} s behind the stream"

        with session_scope(database) as session:
            notes = session.scalar(select(func.count()).select_from(Note))
        time.sleep(1.1)
        purge(env, "1s")
        with session_scope(database) as session:
            left = session.scalar(select(func.count()).select_from(Transaction).where(
                Transaction.transid.in_(list(stream.acknowledged))))
            assert left == 0
            assert session.scalar(select(func.count()).select_from(Note)) == notes
        assert requests_of(database, stream) == EVENTS, "one request an event, none removed"

        connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        for transid in list(stream.acknowledged)[:20]:
            connection.request("GET", f"/v1/transactions/{transid}", headers={"key": "demo-key"})
            answer = connection.getresponse()
            assert answer.status == 404
            assert "expired from the log" in json.loads(answer.read())["message"]
        slowest = max(seconds for _, seconds, _ in stream.answers)
        print(f"\n{len(purged)} purges removed {sum(purged)} transactions during the stream; "
              f"drained {drained:.2f} s after it; slowest intake answer {slowest * 1000:.0f} ms")
        assert slowest < 2.0
    finally:
        api.stop()
        worker.stop()
