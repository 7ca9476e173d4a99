"""Notify URL delivery: the rules (pure), the state machine (database, no broker), and delivery
end to end by real workers (subprocesses; RabbitMQ + PostgreSQL, and Redis + SQLite for the
crash) to real HTTP receivers on localhost.

Every notification a receiver gets is verified with the ``standardwebhooks`` package and checked
against ``docs/notification.schema.json``. Schedules and timeouts are shortened through the
EVENTDESK_NOTIFY_* settings so the whole file runs in well under a minute.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from select import select as wait_readable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from standardwebhooks import Webhook

from api import create_app
from api.openapi import document
from shared.db.engine import dispose_engines, session_scope
from shared.db.migrate import alembic_config, upgrade
from shared.db.models import (
    Account,
    NotificationAttempt,
    NotificationDelivery,
    NotifyDisabledUrl,
    NotifyHostSlot,
    Transaction,
)
from shared.messaging import NOTIFY_QUEUE
from shared.messaging.publish import make_publisher, task_message
from shared.notify import payload, rules, signing, stream
from shared.notify.delivery import (
    REDELIVER_BUSY,
    REDELIVER_MISSING,
    Claim,
    Replay,
    claim,
    record,
    redeliver,
    sweep,
)
from shared.notify.http import AttemptResult
from shared.notify.rules import Policy, Verdict, classify, next_delay, parse_retry_after
from shared.notify.ssrf import parse_networks
from shared.notify.stream import Stream
from shared.notify.views import list_deliveries
from shared.settings import Settings
from tests.conftest import (
    REPO,
    Worker,
    load_demo,
    redis_db_url,
    require,
    throwaway_database,
    wait_until,
)

pytestmark = pytest.mark.xdist_group("notify")

SCHEMA_FILE = REPO / "docs" / "notification.schema.json"
DEMO_SECRET = "whsec_ZGVtby1zaWduaW5nLXNlY3JldC0wMTIzNDU2Nzg5YWI="
NEW_SECRET = "whsec_" + base64.b64encode(b"new-secret-for-the-hooks-account").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"old-secret-for-the-hooks-account").decode()
SCHEDULE = (0.0, 0.3, 0.3, 0.5, 0.5, 0.8, 0.8, 1.0)
JITTER = 0.1
CONNECT_TIMEOUT, READ_TIMEOUT, RETRY_AFTER_MAX = 1.0, 1.5, 3.0
HOST_CONCURRENCY = 2
# What the workers of these tests run with.
NOTIFY_ENV = {
    "EVENTDESK_SECRET_KEY": "test-secret",
    "EVENTDESK_WORKER_METRICS_PORT": "0",
    "EVENTDESK_NOTIFY_SCHEDULE": ",".join(str(delay) for delay in SCHEDULE),
    "EVENTDESK_NOTIFY_JITTER": str(JITTER),
    "EVENTDESK_NOTIFY_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT),
    "EVENTDESK_NOTIFY_TIMEOUT_SECONDS": str(READ_TIMEOUT),
    "EVENTDESK_NOTIFY_RETRY_AFTER_MAX_SECONDS": str(RETRY_AFTER_MAX),
    "EVENTDESK_NOTIFY_HOST_CONCURRENCY": str(HOST_CONCURRENCY),
    "EVENTDESK_NOTIFY_LEASE_MARGIN_SECONDS": "1",
    "EVENTDESK_NOTIFY_SWEEP_INTERVAL_SECONDS": "0.2",
    "EVENTDESK_NOTIFY_REQUEUE_SECONDS": "2",
    "EVENTDESK_NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8",
}
POLICY = Policy(
    schedule=SCHEDULE, jitter=JITTER, connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
    retry_after_max=RETRY_AFTER_MAX, host_concurrency=HOST_CONCURRENCY, lease_margin=1.0,
    sweep_interval=0.2, requeue=2.0, allow=parse_networks("127.0.0.0/8"),
)


# ==========================================================================================
# The rules: pure functions


@pytest.mark.parametrize(("status", "error", "kind"), [
    (200, None, "delivered"), (202, None, "delivered"), (204, None, "delivered"),
    (301, None, "failed"), (302, None, "failed"), (304, None, "failed"),
    (400, None, "failed"), (401, None, "failed"), (403, None, "failed"), (404, None, "failed"),
    (405, None, "failed"), (413, None, "failed"), (422, None, "failed"),
    (408, None, "retry"), (429, None, "retry"), (410, None, "disable"),
    (500, None, "retry"), (502, None, "retry"), (503, None, "retry"), (504, None, "retry"),
    (None, "ConnectError", "retry"), (None, "ConnectTimeout", "retry"),
    (None, "ReadTimeout", "retry"), (None, "WriteTimeout", "retry"),
    (None, "RemoteProtocolError", "retry"), (None, "ReadError", "retry"),
    (None, "DeadlineExceeded", "retry"), (None, "NameResolutionError", "retry"),
    (None, "TLSError", "retry"), (None, "LeaseExpired", "retry"),
    (None, "ForbiddenAddress", "failed"), (None, "InvalidURL", "failed"),
    (None, "UnsupportedProtocol", "failed"),
])
def test_classify(status: int | None, error: str | None, kind: str) -> None:
    assert classify(status, error).kind == kind


def test_retry_after_is_read_on_429_and_503_only() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert classify(429, None, "7", now) == Verdict("retry", 7.0)
    assert classify(503, None, "7", now) == Verdict("retry", 7.0)
    assert classify(500, None, "7", now) == Verdict("retry", None)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert classify(429, None, later, now) == Verdict("retry", 90.0)


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), ("", None), ("120", 120.0), (" 5 ", 5.0), ("soon", None), ("-3", None),
    ("Wed, 01 Jan 2026 00:01:00 GMT", 60.0), ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),
])
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, datetime(2026, 1, 1, tzinfo=UTC)) == seconds


def test_next_delay_follows_the_schedule_with_bounded_jitter() -> None:
    schedule = (0.0, 30.0, 120.0)
    assert next_delay(schedule, 1, jitter=0.0, draw=0.5) == 30.0
    assert next_delay(schedule, 2, jitter=0.0, draw=0.5) == 120.0
    assert next_delay(schedule, 3, jitter=0.0, draw=0.5) is None  # the last attempt was made
    assert next_delay(schedule, 1, jitter=0.2, draw=0.0) == pytest.approx(24.0)
    assert next_delay(schedule, 1, jitter=0.2, draw=0.999999) == pytest.approx(36.0, abs=1e-3)
    for step in range(1, 100):
        assert 24.0 <= next_delay(schedule, 1, jitter=0.2, draw=step / 100) <= 36.0  # type: ignore[operator]


def test_next_delay_honours_retry_after_up_to_its_cap() -> None:
    schedule = (0.0, 30.0, 120.0)
    assert next_delay(schedule, 1, jitter=0, draw=0, retry_after=90) == 90.0
    assert next_delay(schedule, 1, jitter=0, draw=0, retry_after=5) == 30.0  # never sooner
    assert next_delay(schedule, 1, jitter=0, draw=0, retry_after=86400,
                      retry_after_max=3600) == 3600.0
    assert next_delay(schedule, 3, jitter=0, draw=0, retry_after=5) is None


def test_default_schedule_is_eight_attempts_over_about_a_day() -> None:
    schedule = rules.parse_schedule(Settings().notify_schedule)
    assert len(schedule) == 8
    assert 20 * 3600 < sum(schedule) < 26 * 3600


@pytest.mark.parametrize("text", ["", "1,-2", "a,b", "1,,nan"])
def test_bad_schedules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - float() and ours both raise ValueError
        rules.parse_schedule(text)


@pytest.mark.parametrize(("url", "key"), [
    ("http://Example.COM/hook", "example.com:80"), ("https://example.com/x", "example.com:443"),
    ("http://example.com:8080/x", "example.com:8080"), ("http://[::1]:9/x", "::1:9"),
])
def test_host_key(url: str, key: str) -> None:
    assert rules.host_key(url) == key


# ==========================================================================================
# Signing, the schema file, the OpenAPI document


def test_every_secret_signs_and_each_verifies_with_standardwebhooks() -> None:
    body = b'{"transid":"t1"}'
    headers = signing.headers([NEW_SECRET, OLD_SECRET], "msg_1", int(time.time()), body)
    for secret in (NEW_SECRET, OLD_SECRET):
        assert Webhook(secret).verify(body, headers) == {"transid": "t1"}
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert "x-hub-signature" not in headers


def test_hub_signature_is_the_hex_hmac_of_the_body_with_the_newest_secret() -> None:
    body = b'{"transid":"t1"}'
    headers = signing.headers([NEW_SECRET, OLD_SECRET], "msg_1", 1, body, hub=True)
    key = base64.b64decode(NEW_SECRET.removeprefix("whsec_"))
    assert headers["x-hub-signature"] == "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def test_schema_file_is_the_models_schema() -> None:
    """docs/notification.schema.json: regenerate with python -m shared.notify.payload > it."""
    assert SCHEMA_FILE.read_text() == payload.json_schema_text()


def test_openapi_documents_the_notification_as_a_webhook() -> None:
    doc = document()
    webhook = doc["webhooks"]["notification"]["post"]
    assert webhook["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Notification"}
    assert {p["name"] for p in webhook["parameters"]} >= {
        "webhook-id", "webhook-timestamp", "webhook-signature"}
    assert "Notification" in doc["components"]["schemas"]
    assert "/v1/deliveries" in doc["paths"]
    assert "/v1/transactions/{transid}/redeliver" in doc["paths"]
    history = doc["components"]["schemas"]["DeliveryView"]["properties"]["history"]
    assert "AttemptView" in json.dumps(history)


def test_the_sweeper_runs_on_celery_beat() -> None:
    from click.testing import CliRunner

    from shared.cli import beat_command, main, worker_command
    from shared.messaging import NOTIFY_SWEEP
    from worker.app import TASK_MODULES, app

    entry = app.conf.beat_schedule["notify.sweep"]
    assert (entry["task"], entry["options"]["queue"]) == (NOTIFY_SWEEP, "notify")
    assert "worker.sweeper" in TASK_MODULES
    app.loader.import_default_modules()  # what a starting worker does with TASK_MODULES
    assert NOTIFY_SWEEP in app.tasks
    assert "--beat" in worker_command("events,mail,notify", 2, beat=True)
    assert "--beat" not in worker_command("events,mail,notify", 2)
    assert beat_command()[-3:] == ["beat", "--loglevel", "INFO"]
    result = CliRunner().invoke(main, ["beat", "--help"])
    assert result.exit_code == 0
    assert "sweeper" in result.output


# ==========================================================================================
# Receivers


@dataclass
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A notify URL on localhost. It answers the requests in turn with ``answers``, then with
    ``default``; it records each request on arrival, before any delay."""

    def __init__(self, answers: list[Answer] | None = None, default: Answer | None = None,
                 port: int = 0) -> None:
        self.answers = list(answers or [])
        self.default = default or Answer()
        self.received: list[Received] = []
        self.in_flight = self.max_in_flight = 0
        self.closing = threading.Event()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with lock:
                    outer.received.append(Received(
                        time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                    answer = outer.answers.pop(0) if outer.answers else outer.default
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                answered = False
                try:
                    if answer.delay and not outer.wait_unless_gone(self.connection, answer.delay):
                        return
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    # No longer in flight once the body is on its way: the client may send its
                    # next request as soon as it has it, before this thread runs again.
                    with lock:
                        outer.in_flight -= 1
                    answered = True
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up (a timeout): nothing to answer
                finally:
                    if not answered:
                        with lock:
                            outer.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def wait_unless_gone(self, connection: socket.socket, seconds: float) -> bool:
        """Wait ``seconds``; False as soon as the client hangs up (a timeout on its side)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.closing.is_set():
            ready, _, _ = wait_readable([connection], [], [], 0.01)
            if ready and not connection.recv(1, socket.MSG_PEEK):
                return False
        return not self.closing.is_set()

    def ids(self) -> set[str]:
        return {r.headers["webhook-id"] for r in self.received}

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*answers: Answer, default: Answer | None = None, port: int = 0) -> Receiver:
        made.append(Receiver(list(answers), default, port))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def verify_all(receiver: Receiver, *secrets: str) -> list[dict[str, Any]]:
    """Every request verifies with each secret, and is a Notification (docs/notification.schema.json
    is that model's schema: see test_schema_file_is_the_models_schema)."""
    bodies = []
    for request in receiver.received:
        for secret in secrets or (DEMO_SECRET,):
            body = Webhook(secret).verify(request.body, request.headers)
        payload.Notification.model_validate(body)
        bodies.append(body)
    return bodies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ==========================================================================================
# Databases and deliveries


def claim_one(session: Any, delivery_id: int, now: datetime) -> Claim | None:
    """The claim of one delivery, as a batch of one."""
    batch = claim(session, [delivery_id], now, POLICY, 0.5)
    return batch.claims[0] if batch.claims else None


def record_one(session: Any, taken: Claim, result: AttemptResult, now: datetime) -> str | None:
    (status,) = record(session, [(taken, result)], now=now, policy=POLICY, draw=lambda: 0.5)
    return status


def run(database: str, ids: list[int], policy: Policy = POLICY) -> dict[int, str | None]:
    """One attempt of each due delivery of ``ids`` in this process, as a notify worker makes it."""
    with Stream(policy, database_url=database) as deliverer:
        return deliverer.run(ids)


def deliver(delivery_id: int, policy: Policy, *, database_url: str) -> str | None:
    return run(database_url, [delivery_id], policy).get(delivery_id)


def make_delivery(database: str, url: str, account: str = "wdc") -> tuple[str, int]:
    """A finished transaction owing a notification to ``url``: (transid, delivery id)."""
    now = datetime.now(UTC)
    transid = uuid.uuid4().hex
    with session_scope(database) as session:
        session.add(Transaction(
            transid=transid, channel="webex", account_id=account, evtid="server-down",
            correlationid="c1", parameters={}, notifyurl=url, received_at=now,
            status="completed", outcome={"action": "created", "request_id": 1},
            created_at=now, completed_at=now,
        ))
        session.flush()
        delivery = NotificationDelivery(
            transid=transid, account_id=account, url=url, message_id=f"msg_{uuid.uuid4().hex}",
            payload=payload.build(
                transid=transid, correlationid="c1", evtid="server-down", status="completed",
                outcome={"action": "created", "request_id": 1}, failure=None, timestamp=now,
            ),
            status="pending", created_at=now, updated_at=now, next_attempt_at=now,
        )
        session.add(delivery)
        session.flush()
        return transid, delivery.id


def get_delivery(database: str, delivery_id: int) -> NotificationDelivery:
    with session_scope(database) as session:
        found = session.get(NotificationDelivery, delivery_id)
        assert found is not None
        return found


def attempts_of(database: str, delivery_id: int) -> list[NotificationAttempt]:
    with session_scope(database) as session:
        return list(session.scalars(select(NotificationAttempt).where(
            NotificationAttempt.delivery_id == delivery_id).order_by(NotificationAttempt.id)))


def add_hooks_account(database: str) -> None:
    """An account with two secrets (a rotation under way) that asks for x-hub-signature."""
    with session_scope(database) as session:
        session.merge(Account(id="hooks", name="Hooks", signing_secrets=[NEW_SECRET, OLD_SECRET],
                              notify_hub_signature=True))


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A fresh SQLite database, migrated, with the demo records."""
    url = f"sqlite:///{tmp_path / 'notify.sqlite'}"
    upgrade(url)
    load_demo(url)
    add_hooks_account(url)
    return url


def test_migration_0002_goes_down_and_up_again(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'migrate.sqlite'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "0001")
    upgrade(url)
    with session_scope(url) as session:
        assert session.scalars(select(NotifyHostSlot)).all() == []
    dispose_engines()


# ==========================================================================================
# The state machine on the database, no broker: deliver() called in this process


def test_claim_is_a_compare_and_set_and_holds_no_transaction_open(db: str) -> None:
    _, delivery_id = make_delivery(db, "http://127.0.0.1:9/hook")
    now = datetime.now(UTC)
    with session_scope(db) as session:
        first = claim_one(session, delivery_id, now)
    with session_scope(db) as session:
        second = claim_one(session, delivery_id, now)
    assert first is not None
    assert second is None
    row = get_delivery(db, delivery_id)
    assert (row.status, row.attempts, row.lease_token) == ("sending", 1, first.token)
    assert row.lease_until == now + timedelta(seconds=POLICY.lease)


def test_a_delivery_not_yet_due_is_not_claimed(db: str) -> None:
    _, delivery_id = make_delivery(db, "http://127.0.0.1:9/hook")
    with session_scope(db) as session:
        session.execute(update(NotificationDelivery).where(NotificationDelivery.id == delivery_id)
                        .values(next_attempt_at=datetime.now(UTC) + timedelta(seconds=60)))
    with session_scope(db) as session:
        assert claim_one(session, delivery_id, datetime.now(UTC)) is None
    assert get_delivery(db, delivery_id).status == "pending"


def test_the_host_limit_defers_a_delivery_without_spending_an_attempt(db: str) -> None:
    ids = [make_delivery(db, "http://127.0.0.1:9/hook")[1] for _ in range(3)]
    now = datetime.now(UTC)
    claims = []
    for delivery_id in ids:
        with session_scope(db) as session:
            claims.append(claim_one(session, delivery_id, now))
    assert [c is not None for c in claims] == [True, True, False]  # HOST_CONCURRENCY = 2
    deferred = get_delivery(db, ids[2])
    assert (deferred.status, deferred.attempts) == ("pending", 0)
    assert deferred.next_attempt_at is not None
    assert deferred.next_attempt_at > now
    # Another port is another receiver: not held back.
    _, other = make_delivery(db, "http://127.0.0.1:10/hook")
    with session_scope(db) as session:
        assert claim_one(session, other, datetime.now(UTC)) is not None
    # A slot is free again once an attempt is recorded.
    first = claims[0]
    assert first is not None
    with session_scope(db) as session:
        record_one(session, first, AttemptResult(now, 5, status_code=204), now)
    later = now + timedelta(seconds=1)
    with session_scope(db) as session:
        assert claim_one(session, ids[2], later) is not None


def test_a_lost_lease_is_taken_back_by_the_sweeper_and_counted_as_an_attempt(db: str) -> None:
    _, delivery_id = make_delivery(db, "http://127.0.0.1:9/hook")
    now = datetime.now(UTC)
    with session_scope(db) as session:
        taken = claim_one(session, delivery_id, now)
    assert taken is not None
    with session_scope(db) as session:  # within the lease: nothing to take back
        assert sweep(session, now + timedelta(seconds=1), POLICY, lambda: 0.5) == []
    after = now + timedelta(seconds=POLICY.lease + 1)
    with session_scope(db) as session:
        sweep(session, after, POLICY, lambda: 0.5)
    row = get_delivery(db, delivery_id)
    assert (row.status, row.lease_token, row.attempts) == ("pending", None, 1)
    (lost,) = attempts_of(db, delivery_id)
    assert (lost.error, lost.verdict, lost.number) == ("LeaseExpired", "retry", 1)
    # The old worker comes back with a failure: its lease is gone, it changes nothing.
    with session_scope(db) as session:
        assert record_one(session, taken, AttemptResult(now, 5, status_code=500), after) is None
    assert get_delivery(db, delivery_id).status == "pending"
    # ... but a success still counts: the notification has arrived.
    with session_scope(db) as session:
        delivered = record_one(session, taken, AttemptResult(now, 5, status_code=200), after)
        assert delivered == "delivered"


def test_sweep_queues_due_deliveries_once_until_the_mark_passes(db: str) -> None:
    _, delivery_id = make_delivery(db, "http://127.0.0.1:9/hook")
    now = datetime.now(UTC) + timedelta(seconds=1)
    with session_scope(db) as session:
        assert delivery_id in sweep(session, now, POLICY, lambda: 0.5)
    with session_scope(db) as session:
        assert delivery_id not in sweep(session, now + timedelta(seconds=1), POLICY, lambda: 0.5)
    with session_scope(db) as session:  # the message was lost: queued again after the mark
        later = now + timedelta(seconds=POLICY.requeue + 0.1)
        assert delivery_id in sweep(session, later, POLICY, lambda: 0.5)


def test_in_process_delivery_retries_then_dies_and_is_redelivered(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(default=Answer(503))
    transid, delivery_id = make_delivery(db, receiver.url, account="hooks")
    statuses = []
    for _ in SCHEDULE:
        with session_scope(db) as session:  # make it due now, as the sweeper would wait for
            session.execute(update(NotificationDelivery)
                            .where(NotificationDelivery.id == delivery_id)
                            .values(next_attempt_at=datetime.now(UTC)))
        statuses.append(deliver(delivery_id, POLICY, database_url=db))
    assert statuses == ["pending"] * (len(SCHEDULE) - 1) + ["dead"]
    assert len(receiver.received) == len(SCHEDULE)
    assert len(receiver.ids()) == 1
    verify_all(receiver, NEW_SECRET, OLD_SECRET)
    key = base64.b64decode(NEW_SECRET.removeprefix("whsec_"))
    for request in receiver.received:
        digest = hmac.new(key, request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-hub-signature"] == f"sha256={digest}"
    row = get_delivery(db, delivery_id)
    assert (row.status, row.attempts, row.last_error) == ("dead", len(SCHEDULE), "HTTP 503")
    # Redelivery: a fresh schedule, the same webhook-id.
    with session_scope(db) as session:
        replay = redeliver(session, "hooks", transid, datetime.now(UTC))
    assert isinstance(replay, Replay)
    with session_scope(db) as session:
        assert redeliver(session, "hooks", transid, datetime.now(UTC)) == REDELIVER_BUSY
        assert redeliver(session, "wdc", transid, datetime.now(UTC)) == REDELIVER_MISSING
    receiver.default = Answer(200)
    assert deliver(delivery_id, POLICY, database_url=db) == "delivered"
    assert receiver.ids() == {replay.message_id}
    row = get_delivery(db, delivery_id)
    assert (row.attempts, row.schedule_offset, row.status) == (9, 8, "delivered")


def test_a_refused_address_is_a_permanent_failure(db: str) -> None:
    policy = dataclasses.replace(POLICY, allow=())
    _, delivery_id = make_delivery(db, "http://127.0.0.1:9/hook")
    assert deliver(delivery_id, policy, database_url=db) == "failed"
    (attempt,) = attempts_of(db, delivery_id)
    assert (attempt.error, attempt.verdict, attempt.address) == ("ForbiddenAddress", "failed", None)
    assert "loopback" in (get_delivery(db, delivery_id).last_error or "")


def test_list_deliveries_pages_newest_first_and_is_account_scoped(db: str) -> None:
    ids = [make_delivery(db, "http://127.0.0.1:9/hook")[1] for _ in range(5)]
    make_delivery(db, "http://127.0.0.1:9/hook", account="hooks")
    with session_scope(db) as session:
        first = list_deliveries(session, "wdc", status="pending", limit=2, before=None)
        assert first.next is not None
        second = list_deliveries(session, "wdc", status="pending", limit=2,
                                 before=int(first.next))
        everything = list_deliveries(session, "wdc", status=None, limit=100, before=None)
        none = list_deliveries(session, "wdc", status="dead", limit=10, before=None)
    got = [d.transid for d in first.deliveries + second.deliveries]
    assert len(got) == 4
    with session_scope(db) as session:
        expected = [session.get(NotificationDelivery, i).transid  # type: ignore[union-attr]
                    for i in reversed(ids)][:4]
    assert got == expected
    assert len(everything.deliveries) == 5
    assert everything.next is None
    assert none.deliveries == []


def test_delivery_endpoints(
    db: str, configure: Callable[..., None], receivers: Callable[..., Receiver],
) -> None:
    configure(database_url=db)
    api = create_app().test_client()
    key = {"key": "demo-key"}
    receiver = receivers(default=Answer(404))
    transid, delivery_id = make_delivery(db, receiver.url)
    assert api.post(f"/v1/transactions/{transid}/redeliver", headers=key).status_code == 409
    assert deliver(delivery_id, POLICY, database_url=db) == "failed"
    view = api.get(f"/v1/transactions/{transid}", headers=key).get_json()["notification"]
    assert (view["status"], view["attempts"], view["url"]) == ("failed", 1, receiver.url)
    (attempt,) = view["history"]
    assert (attempt["status_code"], attempt["verdict"], attempt["number"]) == (404, "failed", 1)
    assert attempt["response"] == "ok"
    assert attempt["address"] == "127.0.0.1"
    listed = api.get("/v1/deliveries?status=failed", headers=key).get_json()
    assert [d["transid"] for d in listed["deliveries"]] == [transid]
    assert api.get("/v1/deliveries?status=nope", headers=key).status_code == 400
    assert api.get("/v1/deliveries?limit=0", headers=key).status_code == 400
    assert api.get("/v1/deliveries").status_code == 401
    assert api.post(f"/v1/transactions/{transid}/redeliver").status_code == 401
    answer = api.post(f"/v1/transactions/{transid}/redeliver", headers=key)
    assert answer.status_code == 202
    assert answer.get_json() == {"transid": transid, "status": "pending",
                                 "message_id": view["message_id"]}
    assert api.post("/v1/transactions/nope/redeliver", headers=key).status_code == 404
    receiver.default = Answer(204)
    assert deliver(delivery_id, POLICY, database_url=db) == "delivered"
    assert len(receiver.ids()) == 1


# ==========================================================================================
# End to end: real workers (with the beat), RabbitMQ, PostgreSQL


@pytest.fixture(scope="session")
def notify_pg() -> Iterator[str]:
    """A PostgreSQL database of these tests' own: their sweeper must not see other tests' rows."""
    with throwaway_database("eventdesk_notify") as url:
        load_demo(url)
        add_hooks_account(url)
        yield url


@dataclass
class Stack:
    broker: str
    database: str
    worker: Worker

    def publish(self, delivery_id: int) -> None:
        publisher = make_publisher(self.broker, None, 1000, 1000)
        message = task_message("notify.deliver", NOTIFY_QUEUE, f"[{delivery_id}]")
        assert publisher.publish(message, {"test": 1}) is None

    def deliver(self, url: str, account: str = "wdc") -> tuple[str, int]:
        transid, delivery_id = make_delivery(self.database, url, account)
        self.publish(delivery_id)
        return transid, delivery_id

    def status(self, delivery_id: int) -> str:
        return get_delivery(self.database, delivery_id).status

    def wait_status(self, delivery_id: int, status: str, timeout: float = 20) -> None:
        wait_until(lambda: self.status(delivery_id) == status, timeout)


@pytest.fixture(scope="session")
def notify_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of these tests' own, unique to this run.

    Unique, not one per xdist process: these tests publish delivery ids and run a sweeper, so a
    second test run on the same machine (another developer's) must not share their queues.
    """
    require("rabbitmq")
    vhost = f"eventdesk-notify-{uuid.uuid4().hex[:10]}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)

    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    ctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, notify_vhost: str, notify_pg: str,
) -> Iterator[Stack]:
    broker = notify_vhost
    data = tmp_path_factory.mktemp("notify-data")
    worker = Worker({**NOTIFY_ENV, "EVENTDESK_BROKER_URL": broker,
                     "EVENTDESK_DATABASE_URL": notify_pg, "EVENTDESK_DATA_DIR": str(data)},
                    data / "worker.log", concurrency=4, extra=("--beat",))
    yield Stack(broker, notify_pg, worker)
    worker.stop()


@pytest.fixture
def e2e(stack: Stack) -> Iterator[Stack]:
    """The stack; afterwards, whatever a test left pending is given up, so it costs no later
    test any worker time."""
    yield stack
    with session_scope(stack.database) as session:
        session.execute(update(NotificationDelivery)
                        .where(NotificationDelivery.status.in_(("pending", "sending")))
                        .values(status="failed", completed_at=datetime.now(UTC)))


@pytest.fixture
def api(stack: Stack, configure: Callable[..., None]) -> FlaskClient:
    # The receivers are on localhost: the intake refuses such a notify URL unless allowed, too.
    configure(broker_url=stack.broker, database_url=stack.database,
              notify_allow_networks="127.0.0.0/8")
    return create_app().test_client()


def gaps(receiver: Receiver) -> list[float]:
    times = [r.at for r in receiver.received]
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_delivered_once_signed_with_every_secret(
    e2e: Stack, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers()
    transid, delivery_id = e2e.deliver(receiver.url, account="hooks")
    e2e.wait_status(delivery_id, "delivered")
    time.sleep(0.5)  # the sweeper runs every 0.2 s: it must not send it again
    (body,) = verify_all(receiver, NEW_SECRET, OLD_SECRET)
    assert body["transid"] == transid
    assert receiver.received[0].headers["x-hub-signature"].startswith("sha256=")
    assert len(attempts_of(e2e.database, delivery_id)) == 1


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_500_is_retried_on_schedule_with_one_webhook_id_then_dead_then_redelivered(
    e2e: Stack, receivers: Callable[..., Receiver], api: FlaskClient,
) -> None:
    receiver = receivers(default=Answer(500))
    transid, delivery_id = e2e.deliver(receiver.url)
    e2e.wait_status(delivery_id, "dead", timeout=30)
    assert len(receiver.received) == len(SCHEDULE)
    assert len(receiver.ids()) == 1
    verify_all(receiver)
    for gap, planned in zip(gaps(receiver), SCHEDULE[1:], strict=True):
        # Never early; late by at most a sweep interval and some scheduling noise.
        assert planned * (1 - JITTER) - 0.05 <= gap <= planned * (1 + JITTER) + 1.5, gaps(receiver)
    key = {"key": "demo-key"}
    dead = api.get("/v1/deliveries?status=dead", headers=key).get_json()["deliveries"]
    assert transid in [d["transid"] for d in dead]
    view = api.get(f"/v1/transactions/{transid}", headers=key).get_json()["notification"]
    assert [a["status_code"] for a in view["history"]] == [500] * len(SCHEDULE)
    assert [a["number"] for a in view["history"]] == list(range(1, len(SCHEDULE) + 1))
    receiver.default = Answer(200)
    assert api.post(f"/v1/transactions/{transid}/redeliver", headers=key).status_code == 202
    e2e.wait_status(delivery_id, "delivered")
    assert len(receiver.ids()) == 1
    assert len(receiver.received) == len(SCHEDULE) + 1


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_retry_after_is_honoured_and_capped(
    e2e: Stack, receivers: Callable[..., Receiver],
) -> None:
    honoured = receivers(Answer(429, {"Retry-After": "2"}))
    capped = receivers(Answer(503, {"Retry-After": "3600"}))
    _, first = e2e.deliver(honoured.url)
    _, second = e2e.deliver(capped.url)
    e2e.wait_status(first, "delivered")
    e2e.wait_status(second, "delivered")
    (gap,) = gaps(honoured)
    assert 2.0 <= gap < 2.0 + 1.5  # not the schedule's 0.3 s
    (gap,) = gaps(capped)
    assert RETRY_AFTER_MAX <= gap < RETRY_AFTER_MAX + 1.5
    verify_all(honoured)
    verify_all(capped)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_404_is_not_retried_and_301_is_not_followed(
    e2e: Stack, receivers: Callable[..., Receiver],
) -> None:
    missing = receivers(default=Answer(404))
    target = receivers()
    moved = receivers(default=Answer(301, {"Location": target.url}))
    _, first = e2e.deliver(missing.url)
    _, second = e2e.deliver(moved.url)
    e2e.wait_status(first, "failed")
    e2e.wait_status(second, "failed")
    time.sleep(1.0)  # longer than the schedule's next wait: nothing more may come
    assert (len(missing.received), len(moved.received), len(target.received)) == (1, 1, 0)
    ((code, verdict),) = [(a.status_code, a.verdict) for a in attempts_of(e2e.database, second)]
    assert (code, verdict) == (301, "failed")
    verify_all(missing)
    verify_all(moved)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_410_disables_the_url_for_later_notifications(
    e2e: Stack, receivers: Callable[..., Receiver], api: FlaskClient,
) -> None:
    receiver = receivers(Answer(410))
    transid, first = e2e.deliver(receiver.url)
    e2e.wait_status(first, "disabled")
    _, second = e2e.deliver(receiver.url)
    e2e.wait_status(second, "disabled")
    assert len(receiver.received) == 1
    assert attempts_of(e2e.database, second) == []
    with session_scope(e2e.database) as session:
        (disabled,) = session.scalars(select(NotifyDisabledUrl).where(
            NotifyDisabledUrl.url == receiver.url))
        assert (disabled.status_code, disabled.delivery_id) == (410, first)
    # The operator replays it: the URL is enabled again.
    answer = api.post(f"/v1/transactions/{transid}/redeliver", headers={"key": "demo-key"})
    assert answer.status_code == 202
    e2e.wait_status(first, "delivered")
    assert len(receiver.ids()) == 1
    verify_all(receiver)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_a_hanging_receiver_is_cut_off_by_the_timeout(
    e2e: Stack, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(Answer(204, delay=30))
    _, delivery_id = e2e.deliver(receiver.url)
    e2e.wait_status(delivery_id, "delivered")
    cut, done = attempts_of(e2e.database, delivery_id)
    assert cut.error == "ReadTimeout"
    assert READ_TIMEOUT * 1000 <= cut.duration_ms < (CONNECT_TIMEOUT + READ_TIMEOUT) * 1000 + 500
    assert (done.status_code, done.verdict) == (204, "delivered")
    assert len(receiver.ids()) == 1
    verify_all(receiver)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_a_receiver_down_for_three_attempts_gets_it_when_it_comes_back(
    e2e: Stack, receivers: Callable[..., Receiver],
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    _, delivery_id = e2e.deliver(url)
    wait_until(lambda: len(attempts_of(e2e.database, delivery_id)) >= 3, 15)
    receiver = receivers(port=port)
    e2e.wait_status(delivery_id, "delivered")
    attempts = attempts_of(e2e.database, delivery_id)
    assert {a.error for a in attempts[:-1]} == {"ConnectError"}
    assert attempts[-1].status_code == 204
    assert len(receiver.received) == 1
    verify_all(receiver)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_a_slow_receiver_delays_neither_intake_nor_a_fast_receiver(
    e2e: Stack, receivers: Callable[..., Receiver], api: FlaskClient,
) -> None:
    fast = receivers()
    slow = receivers(default=Answer(204, delay=10))

    def intake_to_fast(count: int) -> float:
        """Seconds from accepting ``count`` events to their notifications at the fast receiver."""
        before = len(fast.received)
        started = time.monotonic()
        for n in range(count):
            response = api.post("/resources/v1/events/externalevent/", headers={"key": "demo-key"},
                                json={"notifyurl": fast.url, "events": [{
                                    "evtid": "server-down", "parameters": {
                                        "host": "db1", "subject": f"Slow test {n}",
                                        "source": "nagios", "sourceID": uuid.uuid4().hex}}]})
            assert response.status_code == 200
        wait_until(lambda: len(fast.received) >= before + count, 30, interval=0.02)
        return time.monotonic() - started

    intake_to_fast(3)  # warm up: connections, caches
    baseline = intake_to_fast(10)
    slow_ids = [e2e.deliver(slow.url)[1] for _ in range(6)]
    wait_until(lambda: slow.in_flight == HOST_CONCURRENCY, 10)
    samples: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.02):
            samples.append(slow.in_flight)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        loaded = intake_to_fast(10)
    finally:
        sampling.set()
        sampler.join()
    # Bounded, not a speed: the slow receiver held its share of the workers all along ...
    assert sum(1 for n in samples if n) > len(samples) / 2, samples
    assert slow.max_in_flight <= HOST_CONCURRENCY  # ... and no more than its share
    assert all(e2e.status(i) != "delivered" for i in slow_ids)
    # ... and the fast path was not slowed by more than noise.
    assert loaded < 3 * baseline + 1.5, (baseline, loaded)
    print(f"10 events to the fast receiver: {baseline:.2f} s alone, {loaded:.2f} s beside slow")
    verify_all(fast)


# ==========================================================================================
# A worker killed in the middle of a delivery: Redis + SQLite, workers of this test's own


@pytest.mark.redis
def test_a_worker_killed_mid_delivery_loses_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, receivers: Callable[..., Receiver],
) -> None:
    database = f"sqlite:///{tmp_path / 'crash.sqlite'}"
    upgrade(database)
    load_demo(database)
    env = {**NOTIFY_ENV, "EVENTDESK_BROKER_URL": redis_db_url(request, offset=4),
           "EVENTDESK_DATABASE_URL": database, "EVENTDESK_DATA_DIR": str(tmp_path)}
    receiver = receivers(Answer(204, delay=30))  # the first POST hangs: the worker dies in it
    doomed = Worker(env, tmp_path / "doomed.log", new_session=True)
    try:
        transid, delivery_id = make_delivery(database, receiver.url)
        Stack(env["EVENTDESK_BROKER_URL"], database, doomed).publish(delivery_id)
        wait_until(lambda: receiver.received, 15, interval=0.01)
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(10)
    finally:
        doomed.stop()
    assert get_delivery(database, delivery_id).status == "sending"
    survivor = Worker(env, tmp_path / "survivor.log", extra=("--beat",))
    try:
        wait_until(lambda: get_delivery(database, delivery_id).status == "delivered", 20)
    finally:
        survivor.stop()
        dispose_engines()
    lost, done = attempts_of(database, delivery_id)
    assert (lost.error, lost.number) == ("LeaseExpired", 1)
    assert (done.status_code, done.number) == (204, 2)
    assert len(receiver.received) == 2
    assert len(receiver.ids()) == 1  # the same webhook-id: the receiver can tell it is one
    bodies = verify_all(receiver)
    assert {body["transid"] for body in bodies} == {transid}


# ==========================================================================================
# Deliveries as a stream (shared/notify/stream.py): one batch, several receivers, in this process


def test_a_slow_host_in_the_batch_does_not_delay_the_fast_hosts_deliveries(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    fast = receivers()
    slow = receivers(default=Answer(204, delay=10))
    slow_ids = [make_delivery(db, slow.url)[1] for _ in range(2)]
    fast_ids = [make_delivery(db, fast.url)[1] for _ in range(30)]
    started_at = datetime.now(UTC)
    started = time.monotonic()
    statuses = run(db, slow_ids + fast_ids)
    finished = time.monotonic()
    assert all(statuses[i] == "delivered" for i in fast_ids), statuses
    assert all(statuses[i] == "pending" for i in slow_ids), statuses  # ReadTimeout: a retry
    assert len(fast.received) == 30
    # The fast receiver had every POST, and every one was recorded, while the slow one still
    # held both its lanes (HOST_CONCURRENCY = 2 each): its lanes are its own.
    assert max(r.at for r in fast.received) - started < READ_TIMEOUT
    recorded = max(get_delivery(db, i).completed_at or started_at for i in fast_ids)
    assert (recorded - started_at).total_seconds() < READ_TIMEOUT
    assert finished - started >= READ_TIMEOUT
    assert slow.max_in_flight == 2
    verify_all(fast)
    verify_all(slow)


def test_a_crash_between_post_and_record_repeats_the_same_webhook_id(
    db: str, receivers: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = receivers()
    ids = [make_delivery(db, receiver.url)[1] for _ in range(3)]

    def crash(*_: object, **__: object) -> list[str | None]:
        raise SystemExit("the worker dies before recording")

    # The margin is how late a claim's POST may start: on a loaded machine 0.2 s was too short
    # for a stream's first POSTs (each was given back unsent, and nothing was received).
    policy = dataclasses.replace(POLICY, connect_timeout=0.3, read_timeout=0.3, lease_margin=0.6)
    with monkeypatch.context() as patched:
        patched.setattr(stream, "record", crash)
        with pytest.raises(SystemExit):
            run(db, ids, policy)
    assert len(receiver.received) == 3
    assert {get_delivery(db, i).status for i in ids} == {"sending"}
    # The sweeper takes them back once the lease (and the dead worker's slots) ran out; they are
    # due again after the schedule's first wait, and sent again.
    time.sleep(policy.lease + 0.05)
    with session_scope(db) as session:
        sweep(session, datetime.now(UTC), policy, lambda: 0.0)
    time.sleep(policy.schedule[1])
    assert run(db, ids, policy) == dict.fromkeys(ids, "delivered")
    assert len(receiver.received) == 6
    by_id: dict[str, int] = {}
    for request in receiver.received:
        by_id[request.headers["webhook-id"]] = by_id.get(request.headers["webhook-id"], 0) + 1
    assert sorted(by_id.values()) == [2, 2, 2]  # each notification twice, under one id
    for delivery_id in ids:
        lost, done = attempts_of(db, delivery_id)
        assert (lost.error, lost.number, done.status_code, done.number) == (
            "LeaseExpired", 1, 204, 2)
    verify_all(receiver)


def test_the_per_host_in_flight_limit_holds_within_a_batch(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(default=Answer(204, delay=0.2))
    other = receivers(default=Answer(204, delay=0.2))
    policy = dataclasses.replace(POLICY, host_concurrency=3)
    ids = [make_delivery(db, receiver.url)[1] for _ in range(9)]
    ids += [make_delivery(db, other.url)[1] for _ in range(3)]
    started = time.monotonic()
    assert set(run(db, ids, policy).values()) == {"delivered"}
    # 9 POSTs of 0.2 s through 3 lanes: three rounds; the other host's 3 ran alongside.
    assert (receiver.max_in_flight, other.max_in_flight) == (3, 3)
    assert 0.6 <= time.monotonic() - started < 1.5
    assert max(r.at for r in other.received) - started < 0.3


def test_the_per_host_rate_spaces_the_posts(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers()
    # A lease long enough for the rate's waits on a busy machine: this is about the spacing.
    policy = dataclasses.replace(POLICY, host_concurrency=8, host_rate=20.0, lease_margin=5.0)
    ids = [make_delivery(db, receiver.url)[1] for _ in range(11)]
    assert set(run(db, ids, policy).values()) == {"delivered"}
    times = sorted(r.at for r in receiver.received)
    assert times[-1] - times[0] >= 10 / 20.0 - 0.05  # 11 POSTs at 20/s: 0.5 s at least


def test_a_host_whose_slots_another_worker_holds_is_waited_for_then_sent(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers()
    ids = [make_delivery(db, receiver.url)[1] for _ in range(4)]
    host = receiver.url.split("/")[2]
    now = datetime.now(UTC)
    with session_scope(db) as session:  # another worker holds both slots for 0.3 s more
        session.add_all([NotifyHostSlot(host=host, slot=slot, holder="other",
                                        lease_until=now + timedelta(seconds=0.3))
                         for slot in range(2)])
    policy = dataclasses.replace(POLICY, sweep_interval=2.0)
    started = time.monotonic()
    assert run(db, ids, policy) == dict.fromkeys(ids, "delivered")
    assert min(r.at for r in receiver.received) - started >= 0.25  # not before the slots freed
    assert all(a.number == 1 for i in ids for a in attempts_of(db, i))  # waiting spent none


def test_a_host_still_busy_after_the_sweep_interval_is_left_to_the_sweeper(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers()
    (delivery_id,) = [make_delivery(db, receiver.url)[1]]
    host = receiver.url.split("/")[2]
    with session_scope(db) as session:
        session.add_all([NotifyHostSlot(host=host, slot=slot, holder="other",
                                        lease_until=datetime.now(UTC) + timedelta(seconds=60))
                         for slot in range(2)])
    assert run(db, [delivery_id]) == {}  # sweep_interval 0.2 s
    row = get_delivery(db, delivery_id)
    assert (row.status, row.attempts, receiver.received) == ("pending", 0, [])


def test_a_queue_longer_than_the_lease_allows_is_given_back_unsent(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(default=Answer(204, delay=0.3))
    # A POST may start at most lease - deadline = 0.2 s after its claim; one lane, 0.3 s a POST.
    policy = dataclasses.replace(POLICY, connect_timeout=0.3, read_timeout=0.5, lease_margin=0.2,
                                 host_concurrency=1)
    ids = [make_delivery(db, receiver.url)[1] for _ in range(3)]
    assert run(db, ids, policy) == {ids[0]: "delivered"}
    assert len(receiver.received) == 1
    for delivery_id in ids[1:]:  # pending and due again, no attempt spent or recorded
        row = get_delivery(db, delivery_id)
        assert (row.status, row.attempts, row.lease_token) == ("pending", 0, None)
        assert row.next_attempt_at is not None
        assert row.next_attempt_at <= datetime.now(UTC)
        assert attempts_of(db, delivery_id) == []
    assert run(db, ids[1:2], policy) == {ids[1]: "delivered"}


def test_deliveries_deferred_by_one_stream_are_sent_by_the_stream_holding_the_slots(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(default=Answer(204, delay=0.3))
    mine = [make_delivery(db, receiver.url)[1] for _ in range(4)]
    theirs = [make_delivery(db, receiver.url)[1] for _ in range(2)]
    with Stream(POLICY, database_url=db) as holder, Stream(POLICY, database_url=db) as other:
        job = holder.submit(mine)
        job.claimed.result()  # the holder has both slots (HOST_CONCURRENCY = 2) for 0.6 s
        # The other stream finds no free slot for a sweep interval (0.2 s), and leaves them.
        assert other.run(theirs) == {}
        assert set(job.done.result().values()) == {"delivered"}
        wait_until(lambda: all(get_delivery(db, i).status == "delivered" for i in theirs), 5)
    assert receiver.max_in_flight == 2
    assert len(receiver.received) == 6
    assert len(receiver.ids()) == 6
    assert all(a.number == 1 for i in theirs for a in attempts_of(db, i))  # waiting spent none


def test_a_stopping_stream_records_what_it_sent_and_gives_back_the_rest(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(default=Answer(204, delay=0.3))
    policy = dataclasses.replace(POLICY, host_concurrency=1)
    ids = [make_delivery(db, receiver.url)[1] for _ in range(4)]
    stream = Stream(policy, database_url=db)
    stream.submit(ids).claimed.result()
    wait_until(lambda: receiver.received, 5, interval=0.01)
    stream.close()  # a warm shutdown: no lease is left to run out
    assert len(receiver.received) == 1
    statuses = sorted((get_delivery(db, i).status, get_delivery(db, i).attempts) for i in ids)
    assert statuses == [("delivered", 1)] + [("pending", 0)] * 3
    with session_scope(db) as session:
        assert session.scalars(select(NotifyHostSlot).where(
            NotifyHostSlot.holder.is_not(None))).all() == []


def test_a_lane_whose_post_raises_gives_its_claim_back_and_sends_the_rest(
    db: str, receivers: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = receivers()
    policy = dataclasses.replace(POLICY, host_concurrency=1)
    made = [make_delivery(db, receiver.url) for _ in range(3)]
    ids = [delivery_id for _, delivery_id in made]
    broken = get_delivery(db, ids[0]).message_id
    sign = signing.headers

    def headers(secrets: Any, message_id: str, *args: Any, **kwargs: Any) -> dict[str, str]:
        if message_id == broken:
            raise RuntimeError("a bug in signing")
        return sign(secrets, message_id, *args, **kwargs)

    monkeypatch.setattr(signing, "headers", headers)
    # One lane for the host: the failing claim must not stop it, nor the run wait forever.
    assert run(db, ids, policy) == {ids[1]: "delivered", ids[2]: "delivered"}
    row = get_delivery(db, ids[0])
    assert (row.status, row.attempts, row.lease_token) == ("pending", 0, None)
    assert len(receiver.received) == 2


def test_a_delivery_named_twice_is_sent_once_and_no_one_waits_forever(
    db: str, receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(default=Answer(204, delay=0.2))
    first, second = (make_delivery(db, receiver.url)[1] for _ in range(2))
    with Stream(POLICY, database_url=db) as deliverer:
        job = deliverer.submit([first, first, second])
        again = deliverer.submit([first])  # a second message naming it while it is in hand
        assert again.done.result(timeout=5) == {}
        assert job.done.result(timeout=5) == {first: "delivered", second: "delivered"}
    assert len(receiver.received) == 2
