"""A worker killed in the middle of a batch loses nothing, and the batch is processed once.

The test holds an exclusive lock on the requests table, so the worker's batch is stuck inside
its database transaction (events claimed, nothing committed) when it is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from api import create_app
from shared.db.engine import session_scope
from shared.db.models import Request, Transaction
from tests.conftest import Worker, wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


@pytest.fixture
def env(rabbitmq_crash_url: str, postgres_url: str) -> dict[str, str]:
    return {"EVENTDESK_BROKER_URL": rabbitmq_crash_url, "EVENTDESK_DATABASE_URL": postgres_url,
            "EVENTDESK_SECRET_KEY": "test-secret"}


@pytest.fixture
def locked_requests(postgres_url: str) -> Iterator[Callable[[], None]]:
    """Lock the requests table until the returned function is called."""
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string()
    connection = psycopg.connect(dsn)
    connection.execute("LOCK TABLE requests IN EXCLUSIVE MODE")
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            connection.rollback()
            released = True

    yield release
    release()
    connection.close()


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                           check=False).stdout.split()
    return [int(child) for child in found]


def post_event(env: dict[str, str], configure: Callable[..., None]) -> tuple[str, str]:
    configure(broker_url=env["EVENTDESK_BROKER_URL"],
              database_url=env["EVENTDESK_DATABASE_URL"])
    source_id = uuid.uuid4().hex
    answer = create_app().test_client().post(
        "/resources/v1/events/externalevent/", headers={"key": "demo-key"},
        json={"events": [{"evtid": "server-down", "parameters": {
            "host": "db1", "subject": f"crash {source_id}", "sourceID": source_id}}]})
    assert answer.status_code == 200
    return answer.get_json()["response"][0]["transid"], source_id


def status(database: str, transid: str) -> str | None:
    with session_scope(database) as session:
        row = session.get(Transaction, transid)
        return row.status if row else None


def requests_for(database: str, source_id: str) -> int:
    with session_scope(database) as session:
        return len(session.scalars(select(Request).where(Request.source_id == source_id)).all())


def stuck_in_its_transaction(database: str, transid: str) -> bool:
    # The claim is not committed, so another session cannot see it yet: wait for the worker's
    # lock wait to show up in pg_stat_activity instead.
    with session_scope(database) as session:
        waiting = session.execute(select(Transaction.transid).where(
            Transaction.transid == transid)).first()
        assert waiting is None
        return bool(session.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE '%requests%'")))


def test_pool_process_killed_mid_batch(
    env: dict[str, str], configure: Callable[..., None], postgres_url: str, tmp_path: Path,
    locked_requests: Callable[[], None],
) -> None:
    worker = Worker(env, tmp_path / "worker.log", concurrency=1, queues="events")
    try:
        transid, source_id = post_event(env, configure)
        wait_until(lambda: stuck_in_its_transaction(postgres_url, transid), 30)
        for child in children(worker.proc.pid):
            os.kill(child, signal.SIGKILL)
        locked_requests()
        # The main process requeues the batch; a new pool process takes it.
        wait_until(lambda: status(postgres_url, transid) == "completed", 60)
        assert requests_for(postgres_url, source_id) == 1
    finally:
        worker.stop()


def test_whole_worker_killed_mid_batch(
    env: dict[str, str], configure: Callable[..., None], postgres_url: str, tmp_path: Path,
    locked_requests: Callable[[], None],
) -> None:
    first = Worker(env, tmp_path / "first.log", concurrency=1, queues="events",
                   new_session=True)
    transid, source_id = post_event(env, configure)
    wait_until(lambda: stuck_in_its_transaction(postgres_url, transid), 30)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    locked_requests()
    assert status(postgres_url, transid) is None  # nothing was committed
    # RabbitMQ hands the unacknowledged message to the next worker.
    second = Worker(env, tmp_path / "second.log", concurrency=1, queues="events")
    try:
        wait_until(lambda: status(postgres_url, transid) == "completed", 60)
        assert requests_for(postgres_url, source_id) == 1
    finally:
        second.stop()
