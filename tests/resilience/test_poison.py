"""Poison messages in a live stream: each bad event fails once, alone, and nothing else stalls.

5,000 distinct events go through a gunicorn api into a real worker on a private Redis and a
PostgreSQL database of their own. Meanwhile messages our api would refuse (a NUL in a text
field: PostgreSQL text cannot hold one) are pushed straight onto the ``events`` list, each
holding a poison event between two good ones, as the api's group commit would. Before the
worker isolated failing events, such a message came back to the queue about ten times a second
forever, its events ``queued`` for good.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shared.db.engine import session_scope
from shared.db.models import Transaction
from shared.messaging import EVENTS_PROCESS, EVENTS_QUEUE
from shared.messaging.publish import RedisPublisher, task_message
from shared.transactions.schemas import EventBatch
from tests.conftest import Worker, load_demo, throwaway_database, wait_until
from tests.resilience.harness import Api, Stream, private_redis, service_env, settle

pytestmark = [pytest.mark.resilience, pytest.mark.postgres]

EVENTS = 5000
POISON_AT = range(350, EVENTS, 700)  # before these events are sent: 7 poison messages
POISONS: list[dict[str, Any]] = [
    {"correlationid": "nul\x00"},
    {"evtid": "server\x00down"},
    {"parameters": {"host": "db1", "subject": "disk\x00full"}},
]


class Injector:
    """Pushes crafted messages onto the queue as the api would, bypassing its validation."""

    def __init__(self, broker: str, run: str) -> None:
        self._publisher = RedisPublisher(broker, 100000, 100000)
        self._run = run
        self.poison: list[str] = []
        self.neighbours: list[str] = []

    def _batch(self, event: dict[str, Any]) -> EventBatch:
        return EventBatch.model_validate({
            "channel": "webex", "account_id": "wdc", "received_at": datetime.now(UTC),
            "events": [{"transid": uuid.uuid4().hex, "evtid": "server-down", **event}],
        })

    def inject(self, number: int) -> None:
        name = f"{self._run}-poison-{number}"
        good = [self._batch({"parameters": {"host": "db1", "subject": f"{name} {side}",
                                            "sourceID": f"{name}-{side}"}})
                for side in ("before", "after")]
        poison = self._batch({"parameters": {"host": "db1", "subject": name},
                              **POISONS[POISON_AT.index(number) % len(POISONS)]})
        batches = [good[0], poison, good[1]]
        args = ",".join(batch.model_dump_json() for batch in batches)
        message = task_message(EVENTS_PROCESS, EVENTS_QUEUE, f"[{args}]")
        assert self._publisher.publish(message, {"test": 3}) is None
        self.poison.append(poison.events[0].transid)
        self.neighbours += [batch.events[0].transid for batch in good]


def statuses(database: str, transids: list[str]) -> dict[str, str]:
    with session_scope(database) as session:
        rows = session.execute(select(Transaction.transid, Transaction.status).where(
            Transaction.transid.in_(transids)))
        return {str(transid): str(status) for transid, status in rows}


def log_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # Celery's banner
            continue
    return lines


def test_poison_messages_fail_once_and_the_stream_flows(tmp_path: Path) -> None:
    with throwaway_database("eventdesk_poison") as database, \
            private_redis(tmp_path / "redis") as broker:
        load_demo(database)
        env = service_env(broker.url, database)
        worker = Worker(env, tmp_path / "worker.log")
        api = Api(env, tmp_path / "api.log")
        try:
            stream = Stream(api.port)
            injector = Injector(broker.url, stream.run)

            def between(number: int) -> None:
                if number in POISON_AT:
                    injector.inject(number)

            stream.post(EVENTS, between=between)
            result, took = settle(database, stream, 60)
            crafted = injector.poison + injector.neighbours

            def all_ended() -> dict[str, str] | None:
                found = statuses(database, crafted)
                done = len(found) == len(crafted) and "processing" not in found.values()
                return found if done else None

            # Injected among the stream, they are done by now, unless a message loops.
            ended = wait_until(all_ended, 30)
        finally:
            api.stop()
            worker.stop()
    print(f"\n{result}; settled in {took:.1f} s; poison messages {len(injector.poison)}")
    assert (result.sent, result.acknowledged) == (EVENTS, EVENTS)
    assert (result.completed, result.failed) == (EVENTS, 0)
    assert (result.lost, result.duplicated, result.stuck) == (0, 0, 0)
    assert len(injector.poison) == len(POISON_AT)
    assert {ended[transid] for transid in injector.poison} == {"failed"}
    assert {ended[transid] for transid in injector.neighbours} == {"completed"}
    lines = log_lines(tmp_path / "worker.log")
    # Failed once each: one failure recorded a poison event, and no message went back.
    failures = [line["transid"] for line in lines if line.get("event") == "event failed alone"]
    assert sorted(failures) == sorted(injector.poison)
    processed = [line["transid"] for line in lines
                 if line.get("event") == "processed" and line.get("outcome") == "failed"]
    assert sorted(processed) == sorted(injector.poison)
    assert not [line for line in lines if "requeued" in str(line.get("event"))]
