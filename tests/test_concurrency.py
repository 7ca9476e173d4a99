"""A storm of identical events over several worker processes makes exactly one request."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api import create_app
from shared.db.engine import session_scope
from shared.db.models import Note, Request, Transaction
from tests.conftest import Worker, redis_db_url, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
STORM = 200
NOTES = ("db down", "db still down", "db down")


@pytest.fixture
def workers(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path
) -> Iterator[tuple[str, list[Worker]]]:
    broker = redis_db_url(request, offset=5)
    env = {"EVENTDESK_BROKER_URL": broker, "EVENTDESK_DATABASE_URL": postgres_url,
           "EVENTDESK_SECRET_KEY": "test-secret",
           # Small batches, so the storm is spread over every pool process at once.
           "EVENTDESK_WORKER_BATCH_SIZE": "4", "EVENTDESK_WORKER_BATCH_WAIT_SECONDS": "0.01"}
    started = [Worker(env, tmp_path / f"worker{i}.log", concurrency=2) for i in range(2)]
    yield broker, started
    for worker in started:
        worker.stop()


def test_storm_over_four_worker_processes_makes_one_request(
    workers: tuple[str, list[Worker]], postgres_url: str, configure: Callable[..., None]
) -> None:
    broker, _ = workers
    configure(broker_url=broker, database_url=postgres_url)
    client = create_app().test_client()
    source = f"storm-{uuid.uuid4().hex[:16]}"
    transids = []
    for i in range(STORM):  # one HTTP request, so one message, per event
        body = {"events": [{"evtid": "server-down", "parameters": {
            "host": "db1", "subject": "Server Down", "source": source, "ci": "ABC1234",
            "note": NOTES[i % len(NOTES)]}}]}
        answer = client.post("/resources/v1/events/externalevent/", json=body,
                             headers={"key": "demo-key"})
        assert answer.status_code == 200
        transids.append(answer.get_json()["response"][0]["transid"])

    def finished() -> list[Transaction] | None:
        with session_scope(postgres_url) as session:
            rows = session.scalars(
                select(Transaction).where(Transaction.transid.in_(transids))).all()
        done = [row for row in rows if row.status != "processing"]
        return done if len(done) == STORM else None

    rows = wait_until(finished, 90, 0.2)
    with session_scope(postgres_url) as session:
        requests = session.scalars(select(Request).where(Request.source == source)).all()
        assert len(requests) == 1
        notes = session.scalars(select(Note.text).where(
            Note.request_id == requests[0].id).order_by(Note.id)).all()
        assert session.scalar(select(func.count()).select_from(Request).where(
            Request.source == source)) == 1
    assert sorted(notes) == ["db down", "db still down"]
    assert {row.status for row in rows} == {"completed"}
    actions = Counter(row.outcome["action"] for row in rows if row.outcome)
    assert actions == {"created": 1, "updated": 1, "unchanged": STORM - 2}
    assert {row.outcome["request_id"] for row in rows if row.outcome} == {requests[0].id}
