"""Events through a real broker and a real Celery worker (subprocess, prefork), end to end.

Stacks: Redis + PostgreSQL, Redis + SQLite, RabbitMQ + PostgreSQL. Each xdist process gets its
own Redis database, PostgreSQL database and RabbitMQ vhost.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from standardwebhooks import Webhook

from api import create_app
from shared.db.engine import session_scope
from shared.db.models import Request
from shared.messaging import EVENTS_PROCESS, EVENTS_QUEUE
from shared.messaging.publish import make_publisher, task_message
from shared.records.importer import import_records
from shared.transactions.schemas import EventBatch
from tests.conftest import Worker, redis_db_url, wait_until

PATH = "/resources/v1/events/externalevent/"
DEMO_SECRET = "whsec_ZGVtby1zaWduaW5nLXNlY3JldC0wMTIzNDU2Nzg5YWI="


class Stack:
    def __init__(self, broker: str, database: str, log: Path, **settings: str) -> None:
        self.broker, self.database = broker, database
        self.worker = Worker({
            "EVENTDESK_BROKER_URL": broker, "EVENTDESK_DATABASE_URL": database,
            "EVENTDESK_SECRET_KEY": "test-secret", "EVENTDESK_NOTIFY_TIMEOUT_SECONDS": "5",
            # The receivers are on localhost, which the SSRF guard refuses unless allowed.
            "EVENTDESK_NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8",
            **{f"EVENTDESK_{name.upper()}": value for name, value in settings.items()},
        }, log)


def _stack(
    tmp_path_factory: pytest.TempPathFactory, broker: str, database: str
) -> Iterator[Stack]:
    stack = Stack(broker, database, tmp_path_factory.mktemp("worker") / "worker.log")
    yield stack
    stack.worker.stop()


@pytest.fixture(scope="session")
def redis_postgres(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[Stack]:
    yield from _stack(tmp_path_factory, redis_db_url(request, offset=1), postgres_url)


@pytest.fixture(scope="session")
def redis_sqlite(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_url: str
) -> Iterator[Stack]:
    yield from _stack(tmp_path_factory, redis_db_url(request, offset=2), sqlite_url)


@pytest.fixture(scope="session")
def rabbitmq_postgres(
    tmp_path_factory: pytest.TempPathFactory, rabbitmq_url: str, postgres_url: str
) -> Iterator[Stack]:
    yield from _stack(tmp_path_factory, rabbitmq_url, postgres_url)


STACKS = [
    pytest.param("redis_postgres", marks=[pytest.mark.redis, pytest.mark.postgres]),
    pytest.param("redis_sqlite", marks=[pytest.mark.redis]),
    pytest.param("rabbitmq_postgres", marks=[pytest.mark.rabbitmq, pytest.mark.postgres]),
]


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture
def api(stack: Stack, configure: Callable[..., None]) -> FlaskClient:
    # The receivers are on localhost: the intake refuses such a notify URL unless allowed, too.
    configure(broker_url=stack.broker, database_url=stack.database,
              notify_allow_networks="127.0.0.0/8")
    return create_app().test_client()


def send(api: FlaskClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = api.post(PATH, json=body, headers={"key": "demo-key"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["response"]  # type: ignore[no-any-return]


def status(api: FlaskClient, transid: str) -> dict[str, Any]:
    response = api.get(f"/v1/transactions/{transid}", headers={"key": "demo-key"})
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def wait_done(api: FlaskClient, transid: str, timeout: float = 30) -> dict[str, Any]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (view := status(api, transid))["status"] not in ("queued", "processing") and view,
        timeout,
    )


def event(source_id: str, **parameters: str) -> dict[str, Any]:
    return {"evtid": "server-down", "correlationid": "c1", "parameters": {
        "host": "db1", "subject": "Server Down", "source": "nagios", "sourceID": source_id,
        # A note of its own, so that event matching does not fold tests into each other.
        "note": f"event {source_id}", **parameters,
    }}


def requests_for(database: str, source_id: str) -> list[Request]:
    with session_scope(database) as session:
        return list(session.scalars(select(Request).where(Request.source_id == source_id)))


def test_event_becomes_a_request(api: FlaskClient, stack: Stack) -> None:
    source_id = uuid.uuid4().hex
    (entry,) = send(api, {"events": [event(source_id)]})
    assert status(api, entry["transid"])["status"] in ("queued", "completed")
    view = wait_done(api, entry["transid"])
    assert view["status"] == "completed"
    assert view["outcome"]["action"] == "created"
    (request,) = requests_for(stack.database, source_id)
    assert (view["outcome"]["request_id"], request.subject) == (request.id, "Server Down")


def test_hundred_events_in_one_body(api: FlaskClient, stack: Stack) -> None:
    source_id = uuid.uuid4().hex
    entries = send(api, {"events": [event(source_id, subject=f"disk {i} full")
                                    for i in range(100)]})
    for entry in entries:
        assert wait_done(api, entry["transid"])["status"] == "completed"
    assert len(requests_for(stack.database, source_id)) == 100


def test_same_batch_delivered_twice_makes_one_request(api: FlaskClient, stack: Stack) -> None:
    def batch_for(source_id: str) -> EventBatch:
        return EventBatch.model_validate({
            "channel": "webex", "account_id": "wdc", "received_at": datetime.now(UTC),
            "events": [{"transid": uuid.uuid4().hex, "evtid": "server-down",
                        "parameters": event(source_id)["parameters"]}],
        })

    source_id, marker_id = uuid.uuid4().hex, uuid.uuid4().hex
    batch, marker = batch_for(source_id), batch_for(marker_id)
    publisher = make_publisher(stack.broker, None, 1000, 1000)

    def publish(*batches: EventBatch) -> None:
        args = ",".join(one.model_dump_json() for one in batches)
        assert publisher.publish(task_message(EVENTS_PROCESS, EVENTS_QUEUE, f"[{args}]"),
                                 {"test": len(batches)}) is None

    publish(batch)
    wait_until(lambda: requests_for(stack.database, source_id))
    # Delivered again, as after a lost acknowledgement; a marker rides in the same message, whose
    # batches are processed together: once the marker's request is there, the copy is done.
    publish(batch, marker)
    wait_until(lambda: requests_for(stack.database, marker_id))
    assert status(api, batch.events[0].transid)["status"] == "completed"
    assert len(requests_for(stack.database, source_id)) == 1


def test_one_message_with_several_batches_processes_them_all(
    api: FlaskClient, stack: Stack
) -> None:
    # The api's group commit puts the batches of concurrent requests in one message.
    source_ids = [uuid.uuid4().hex for _ in range(3)]
    batches = [EventBatch.model_validate({
        "channel": "webex", "account_id": "wdc", "received_at": datetime.now(UTC),
        "events": [{"transid": uuid.uuid4().hex, "evtid": "server-down",
                    "parameters": event(source_id)["parameters"]}],
    }) for source_id in source_ids]
    args = ",".join(batch.model_dump_json() for batch in batches)
    publisher = make_publisher(stack.broker, None, 1000, 1000)
    assert publisher.publish(task_message(EVENTS_PROCESS, EVENTS_QUEUE, f"[{args}]"),
                             {"test": 3}) is None
    # Our api did not sign these transids, so the status endpoint knows them only once written.
    def made(source_id: str) -> bool:
        return len(requests_for(stack.database, source_id)) == 1

    for source_id in source_ids:
        assert wait_until(lambda: made(source_id))  # noqa: B023 - called before the next turn
    for batch in batches:
        assert wait_done(api, batch.events[0].transid)["status"] == "completed"


class _Message:
    def __init__(self, *events: int) -> None:
        self.args: list[dict[str, Any]] = [{"events": [{}] * count} for count in events]


def test_a_flush_is_cut_into_jobs_by_event_count() -> None:
    from shared.batching import runs
    from worker.events import events_in

    one, two, big, empty = _Message(1), _Message(1, 1), _Message(100), _Message()
    assert runs([], events_in, 3) == []
    assert runs([one, two, one], events_in, 3) == [[one, two], [one]]
    # A message is never split, even when it alone is over the limit.
    assert runs([one, big, one], events_in, 3) == [[one], [big], [one]]
    assert runs([empty, one], events_in, 1) == [[empty, one]]
    # Not a message of ours: it counts as one, and process() logs and drops it.
    assert events_in(type("Odd", (), {"args": ["text"]})()) == 1


def test_expired_event_takes_no_action(api: FlaskClient, stack: Stack) -> None:
    source_id = uuid.uuid4().hex
    expiry = (datetime.now(UTC) + timedelta(milliseconds=1)).isoformat()
    (entry,) = send(api, {"expiry": expiry, "events": [event(source_id)]})
    view = wait_done(api, entry["transid"])
    assert view["status"] == "expired"
    assert "outcome" not in view
    assert requests_for(stack.database, source_id) == []


class Receiver:
    """A notify URL on localhost that records what it is sent."""

    def __init__(self) -> None:
        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_outcome_is_posted_signed_to_the_notify_url(
    api: FlaskClient, stack: Stack, receiver: Receiver
) -> None:
    (entry,) = send(api, {"notifyurl": receiver.url, "events": [event(uuid.uuid4().hex)]})
    wait_until(lambda: receiver.received)
    headers, body = receiver.received[0]
    payload = Webhook(DEMO_SECRET).verify(body, headers)
    assert payload["transid"] == entry["transid"]
    assert (payload["correlationid"], payload["status"], payload["code"]) == (
        "c1", "completed", "1000"
    )
    assert payload["outcome"]["action"] == "created"
    view = wait_until(lambda: (v := status(api, entry["transid"])).get("notification", {}).get(
        "status") == "delivered" and v)
    assert view["notification"]["attempts"] == 1
    assert json.loads(body) == payload


def test_a_definitions_templates_and_default_notify_url_end_to_end(
    api: FlaskClient, stack: Stack, receiver: Receiver
) -> None:
    evtid = f"hooked-{uuid.uuid4().hex[:12]}"
    with session_scope(stack.database) as session:
        import_records(session, {"event_definitions": [{
            "account": "wdc", "evtid": evtid, "mandatory": ["host"],
            "subject_template": "{host} is down", "note_template": "{check} failed on {host}",
            "notifyurl": receiver.url,
        }]})
    source_id = uuid.uuid4().hex
    # A host of its own: the stacks share a database, and the same subject and note would match.
    host = f"web-{source_id[:8]}"
    parameters = {"host": host, "check": "ping", "sourceID": source_id}
    (entry,) = send(api, {"events": [{"evtid": evtid, "parameters": parameters}]})
    wait_until(lambda: receiver.received)
    payload = json.loads(receiver.received[0][1])
    assert (payload["transid"], payload["evtid"]) == (entry["transid"], evtid)
    view = wait_done(api, entry["transid"])
    assert view["parameters"] == parameters
    (request,) = requests_for(stack.database, source_id)
    assert request.subject == f"{host} is down"
