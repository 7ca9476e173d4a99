"""The Mail API end to end: real SMTP (smtplib) to a running ``eventdesk smtp``, and
``POST /v1/mail``, processed by a real Celery worker on Redis + PostgreSQL (test_worker.py's
stack), into requests and notes."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text

from api import create_app
from shared.db.engine import get_sessionmaker, session_scope
from shared.db.models import Account, MailMessage, Note, Request
from tests.conftest import REPO, redis_db_url, self_signed, wait_until
from tests.resilience.proxy import TcpProxy
from tests.test_worker import Stack, redis_postgres, wait_done

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]
__all__ = ["redis_postgres"]  # the stack fixture, shared with test_worker.py
MAX_BYTES = 200_000


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Listener:
    """``python -m api.smtp`` on a free port, on the stack's broker and database."""

    def __init__(self, stack: Stack, log: Path, **settings: str) -> None:
        self.port = free_port()
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.smtp", "--port", str(self.port)], cwd=REPO,
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "EVENTDESK_BROKER_URL": stack.broker,
                 "EVENTDESK_DATABASE_URL": stack.database, "EVENTDESK_SECRET_KEY": "test-secret",
                 "EVENTDESK_MAIL_MAX_BYTES": str(MAX_BYTES), "EVENTDESK_SMTP_METRICS_PORT": "0",
                 **{f"EVENTDESK_{name.upper()}": value for name, value in settings.items()}})
        wait_until(lambda: self.listening() or self.proc.poll() is not None, 30)
        if self.proc.poll() is not None:
            raise RuntimeError("smtp did not start:\n" + log.read_text())

    def listening(self) -> bool:
        with closing(socket.socket()) as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self._log.close()


@pytest.fixture(scope="module")
def listener(redis_postgres: Stack, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Listener]:
    started = Listener(redis_postgres, tmp_path_factory.mktemp("smtp") / "smtp.log")
    yield started
    started.stop()


@pytest.fixture
def api(redis_postgres: Stack, configure: Callable[..., None]) -> FlaskClient:
    configure(broker_url=redis_postgres.broker, database_url=redis_postgres.database)
    return create_app().test_client()


def mail(body: str, *, subject: str, sender: str = "ellen.brown@widget.com",
         to: str = "wdc@mail.eventdesk.local", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Ellen <{sender}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@widget.com>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def processed(database: str, message_id: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        with session_scope(database) as session:
            row = session.scalars(select(MailMessage).where(
                MailMessage.message_id == message_id)).first()
            if row is None or row.status == "received":
                return None
            return {"status": row.status, "request_id": row.request_id,
                    "transid": row.transid}
    return wait_until(done, timeout)  # type: ignore[no-any-return]


def note_texts(database: str, request_id: int) -> list[str]:
    with session_scope(database) as session:
        return list(session.scalars(select(Note.text).where(Note.request_id == request_id)
                                    .order_by(Note.id)))


def message_id(message: EmailMessage) -> str:
    return str(message["Message-ID"]).strip("<>")


def test_smtp_mail_becomes_a_request_and_a_reply_a_note(
    listener: Listener, redis_postgres: Stack, api: FlaskClient,
) -> None:
    first = mail("My screen is black.", subject=f"Screen {uuid.uuid4().hex[:6]}",
                 to="eus.wdc@mail.eventdesk.local")
    with listener.client() as smtp:
        assert smtp.send_message(first) == {}
    created = processed(redis_postgres.database, message_id(first))
    assert created["status"] == "processed"
    view = wait_done(api, created["transid"])
    assert view["outcome"]["action"] == "created"
    with session_scope(redis_postgres.database) as session:
        request = session.get(Request, created["request_id"])
        assert request is not None
        assert (request.source, request.source_id, request.team_id, request.requested_for_id) \
            == ("Email", message_id(first), 104, 302)
    assert note_texts(redis_postgres.database, created["request_id"]) == ["My screen is black."]

    reply = mail("It works again.", subject=f"Re: {first['Subject']}",
                 In_Reply_To=str(first["Message-ID"]))
    with listener.client() as smtp:
        smtp.send_message(reply)
    noted = processed(redis_postgres.database, message_id(reply))
    assert noted["request_id"] == created["request_id"]
    assert note_texts(redis_postgres.database, created["request_id"])[-1] == "It works again."

    # The same thread through the HTTP door: a second reply, by References.
    again = mail("Thanks!", subject="Re: Re: Screen", References=str(reply["Message-ID"]))
    response = api.post("/v1/mail", data=bytes(again), content_type="message/rfc822",
                        query_string={"recipient": "wdc@mail.eventdesk.local"},
                        headers={"key": "demo-key"})
    assert response.status_code == 202
    view = wait_done(api, response.get_json()["transid"])
    assert view["status"] == "completed"
    assert view["outcome"]["request_id"] == created["request_id"]
    assert view["outcome"]["action"] == "updated"


def test_http_mail_with_parameters_becomes_a_request(
    redis_postgres: Stack, api: FlaskClient,
) -> None:
    message = mail("#rfc\n#high\n\nPlease upgrade the switch.", subject="Upgrade",
                   sender="nick.wheeler@widget.com")
    response = api.post("/v1/mail", data=bytes(message), content_type="message/rfc822",
                        headers={"key": "demo-key",
                                 "X-4me-Recipient": "network.wdc@mail.eventdesk.local"})
    assert response.status_code == 202
    view = wait_done(api, response.get_json()["transid"])
    assert view["outcome"]["action"] == "created"
    request = api.get(f"/v1/requests/{view['outcome']['request_id']}",
                      headers={"key": "demo-key"}).get_json()
    assert (request["category"], request["impact"], request["team"]["id"]) == \
        ("rfc", "high", 102)


def test_refusals_at_rcpt_and_data(listener: Listener, redis_postgres: Stack) -> None:
    with listener.client() as smtp:
        smtp.ehlo()
        assert smtp.has_extn("size")
        smtp.mail("ellen.brown@widget.com")
        code, text = smtp.rcpt("nobody@mail.eventdesk.local")
        assert code == 550
        assert b"no account" in text
        assert smtp.rcpt("sales.wdc@mail.eventdesk.local")[0] == 550
        assert smtp.rcpt("wdc@mail.eventdesk.local")[0] == 250
        big = mail(("x" * 70 + "\n") * (MAX_BYTES // 70), subject="Too big").as_bytes(
            policy=policy.SMTP)
        answer = smtp.data(big)
        assert answer[0] == 552, answer
        smtp.mail("ellen.brown@widget.com")
        smtp.rcpt("wdc@mail.eventdesk.local")
        answer = smtp.data(b"\r\n")  # nothing a worker could read
        assert answer == (554, b"5.6.0 the message is empty"), answer
    with session_scope(redis_postgres.database) as session:
        session.get(Account, "widget").mail_domain = "mail.eventdesk.local"  # type: ignore[union-attr]
    try:
        with listener.client() as smtp:
            smtp.ehlo()
            smtp.mail("ellen.brown@widget.com")
            code, text = smtp.rcpt("widget@mail.eventdesk.local")
            assert code == 550
            assert b"directory account" in text
    finally:
        with session_scope(redis_postgres.database) as session:
            session.get(Account, "widget").mail_domain = None  # type: ignore[union-attr]


def test_peers_outside_the_accepted_networks_are_refused(
    redis_postgres: Stack, tmp_path: Path,
) -> None:
    metrics_port = free_port()
    strict = Listener(redis_postgres, tmp_path / "smtp.log", smtp_allow_networks="10.0.0.0/8",
                      smtp_metrics_port=str(metrics_port))
    try:
        with strict.client() as smtp:
            smtp.ehlo()
            code, _ = smtp.mail("ellen.brown@widget.com")
            assert code == 550
        exposed = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'eventdesk_mail_received_total{result="refused_peer"} 1.0' in exposed
        assert 'eventdesk_mail_received_total{result="accepted"} 0.0' in exposed
    finally:
        strict.stop()


def test_a_listener_killed_after_its_250_loses_nothing(
    redis_postgres: Stack, tmp_path: Path,
) -> None:
    doomed = Listener(redis_postgres, tmp_path / "smtp.log")
    message = mail("Sent just before the crash.", subject=f"Crash {uuid.uuid4().hex[:6]}")
    smtp = doomed.client()
    smtp.send_message(message)
    os.kill(doomed.proc.pid, signal.SIGKILL)
    doomed.proc.wait(10)
    smtp.close()
    assert processed(redis_postgres.database, message_id(message))["status"] == "processed"
    doomed.stop()


def test_a_database_gone_at_data_is_451_and_the_message_sent_again_is_stored(
    redis_postgres: Stack, tmp_path: Path,
) -> None:
    """Between RCPT (the recipient known already) and the end of DATA, the database goes: its
    connections reset, or a black hole. Either way the sender is told 451 (nothing is stored:
    it keeps the message and sends it again), the black hole's within the statement timeout
    and its margin, and the listener keeps serving: once the database is back, the message
    sent again gets its 250 and is processed."""
    with TcpProxy(5432) as proxy:
        through = redis_postgres.database.replace(":5432/", f":{proxy.port}/")
        # The recipient stays known (no RCPT lookup through the fault).
        listener = Listener(redis_postgres, tmp_path / "smtp.log", database_url=through,
                            database_statement_timeout_seconds="1", cache_ttl_seconds="300")
        try:
            with listener.client() as smtp:
                smtp.send_message(mail("Before.", subject="Before the outage"))
                for fault in (proxy.cut, proxy.blackhole):
                    smtp.send_message(mail("Warm.", subject="The connection is up"))
                    fault()
                    lost = mail("During.", subject=f"Outage {uuid.uuid4().hex[:6]}")
                    started = time.monotonic()
                    with pytest.raises(smtplib.SMTPDataError) as caught:
                        smtp.send_message(lost)
                    assert caught.value.smtp_code == 451
                    assert time.monotonic() - started < 1 + 0.5 + 1.5
                    proxy.restore()
                    smtp.send_message(lost)  # the sender's MTA, trying again
                    assert processed(redis_postgres.database,
                                     message_id(lost))["status"] == "processed"
        finally:
            listener.stop()


def test_sigterm_answers_the_message_being_stored_and_tells_idle_sessions_421(
    redis_postgres: Stack, tmp_path: Path,
) -> None:
    """A rolling restart: SIGTERM while a message is being stored. The listener takes no new
    connection, tells an idle session 421 at once, answers the message 250 once it is stored,
    and only then exits."""
    stopping = Listener(redis_postgres, tmp_path / "smtp.log",
                        database_statement_timeout_seconds="60", smtp_drain_seconds="60")
    message = mail("Stored during the restart.", subject=f"Restart {uuid.uuid4().hex[:6]}")
    idle, sending = stopping.client(), stopping.client()
    idle.ehlo()
    sending.ehlo()
    # The message's insert waits on an uncommitted row with its Message-ID: its commit is under
    # way when the signal comes, for as long as the test holds the row.
    blocker = get_sessionmaker(redis_postgres.database)()
    try:
        blocker.add(MailMessage(
            transid=uuid.uuid4().hex, account_id="wdc", recipient="wdc@mail.eventdesk.local",
            message_id=message_id(message), raw=b"held", peer="test",
            received_at=datetime.now(UTC), status="received"))
        blocker.flush()
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(sending.send_message, message)
            wait_until(lambda: storing_waits(redis_postgres.database), 30)
            stopping.proc.send_signal(signal.SIGTERM)

            assert idle.getreply()[0] == 421
            wait_until(lambda: not stopping.listening(), 10)
            assert stopping.proc.poll() is None  # still answering the message being stored
            blocker.rollback()
            assert answer.result(30) == {}
            assert sending.getreply()[0] == 421  # then its session ends too
        assert stopping.proc.wait(30) == 0  # every session ended: the 60 s were not waited out
        assert processed(redis_postgres.database, message_id(message))["status"] == "processed"
    finally:
        blocker.rollback()  # a failed assertion must not leave the row locked for other tests
        blocker.close()
        stopping.stop()


def test_a_second_sigint_ends_the_drain_at_once(redis_postgres: Stack, tmp_path: Path) -> None:
    stopping = Listener(redis_postgres, tmp_path / "smtp.log", smtp_drain_seconds="60")
    try:
        with stopping.client() as slow:
            slow.ehlo()
            slow.mail("ellen.brown@widget.com")
            slow.rcpt("wdc@mail.eventdesk.local")
            assert slow.docmd("DATA")[0] == 354
            slow.send(b"Subject: half a message\r\n")  # and no more: the drain waits for it
            stopping.proc.send_signal(signal.SIGINT)
            wait_until(lambda: not stopping.listening(), 10)
            assert stopping.proc.poll() is None
            stopping.proc.send_signal(signal.SIGINT)
            assert stopping.proc.wait(20) == 0
    finally:
        stopping.stop()


def storing_waits(database: str) -> bool:
    """Whether an insert of stored mail is waiting for another transaction's lock."""
    with session_scope(database) as session:
        return bool(session.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO mail_messages%'")))


def test_per_peer_connection_and_message_limits(redis_postgres: Stack, tmp_path: Path) -> None:
    limited = Listener(redis_postgres, tmp_path / "smtp.log", smtp_peer_connections="2",
                       smtp_peer_messages_per_minute="3")
    try:
        first, second = limited.client(), limited.client()
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            limited.client()
        assert refused.value.smtp_code == 421
        second.quit()
        first.ehlo()
        answers = []
        for _ in range(4):
            answers.append(first.mail("ellen.brown@widget.com")[0])
            first.rset()
        assert answers == [250, 250, 250, 451]
        first.quit()
        wait_until(lambda: limited.client().quit(), 10)  # a connection closed frees its place
    finally:
        limited.stop()


def test_starttls_when_a_certificate_is_configured(
    redis_postgres: Stack, tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path)
    secure = Listener(redis_postgres, tmp_path / "smtp.log", smtp_tls_cert=str(cert),
                      smtp_tls_key=str(key))
    try:
        message = mail("Over TLS.", subject=f"TLS {uuid.uuid4().hex[:6]}")
        with secure.client() as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls")
            context = ssl.create_default_context(cafile=str(cert))
            context.check_hostname = False
            smtp.starttls(context=context)
            smtp.ehlo()
            assert smtp.send_message(message) == {}
        assert processed(redis_postgres.database, message_id(message))["status"] == "processed"
    finally:
        secure.stop()


def test_hostile_mail_is_quarantined_and_the_worker_keeps_serving(
    listener: Listener, redis_postgres: Stack,
) -> None:
    deep_id, flat_id = f"deep-{uuid.uuid4().hex}", f"flat-{uuid.uuid4().hex}"
    deep = (f"From: ellen.brown@widget.com\r\nMessage-ID: <{deep_id}>\r\n".encode()
            + b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                       for i in range(200)) + b"Content-Type: text/plain\r\n\r\nx\r\n")
    not_mime = f"Message-ID: <{flat_id}>\r\n\r\n\x01\x02 no headers to speak of\r\n".encode()
    with listener.client() as smtp:
        for raw in (deep, not_mime):
            assert smtp.sendmail("x@widget.com", ["wdc@mail.eventdesk.local"], raw) == {}
    assert processed(redis_postgres.database, deep_id)["status"] == "quarantined"
    assert processed(redis_postgres.database, flat_id)["status"] == "rejected"  # no sender
    fine = mail("Still here?", subject=f"After {uuid.uuid4().hex[:6]}")
    with listener.client() as smtp:
        smtp.send_message(fine)
    assert processed(redis_postgres.database, message_id(fine))["status"] == "processed"


def stored_unqueued(database: str, message: EmailMessage, received_at: datetime) -> int:
    """``message`` stored as intake stores it, and not queued; its id."""
    from shared.mail import store
    from shared.mail.queries import Destination

    with session_scope(database) as session:
        [(mail_id, _)] = store.save(session, [store.NewMail(
            transid=uuid.uuid4().hex, destination=Destination("wdc", None,
                                                              "wdc@mail.eventdesk.local"),
            message_id=message_id(message), raw=message.as_bytes(policy=policy.SMTP),
            peer="test", now=received_at)])
    assert mail_id is not None
    return mail_id


def test_the_sweep_queues_a_stored_message_whose_task_never_reached_the_broker(
    redis_postgres: Stack, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Intake died between its commit and its publish (or the broker refused the task): the
    beat's mail.sweep queues the message again once it has waited REQUEUE_AFTER, and the
    running worker processes it."""
    import worker.mail as mail_tasks
    from worker.app import make_celery

    message = mail("Stored, never queued.", subject=f"Stranded {uuid.uuid4().hex[:6]}")
    stored_unqueued(redis_postgres.database, message,
                    datetime.now(UTC) - mail_tasks.REQUEUE_AFTER - timedelta(seconds=1))
    configure(broker_url=redis_postgres.broker, database_url=redis_postgres.database)
    monkeypatch.setattr(mail_tasks, "app", make_celery())
    assert mail_tasks.sweep() >= 1
    assert processed(redis_postgres.database, message_id(message))["status"] == "processed"


def test_a_task_queued_before_the_group_commit_names_one_id_and_is_processed(
    redis_postgres: Stack, configure: Callable[..., None],
) -> None:
    """A rolling upgrade: an older listener queued ``mail.process`` with one id, not a list."""
    from shared.messaging import MAIL_PROCESS, MAIL_QUEUE
    from worker.app import make_celery

    message = mail("Queued the old way.", subject=f"Old task {uuid.uuid4().hex[:6]}")
    mail_id = stored_unqueued(redis_postgres.database, message, datetime.now(UTC))
    configure(broker_url=redis_postgres.broker, database_url=redis_postgres.database)
    make_celery().send_task(MAIL_PROCESS, args=[mail_id], queue=MAIL_QUEUE)
    assert processed(redis_postgres.database, message_id(message))["status"] == "processed"


def test_a_mail_alone_is_processed_without_waiting_out_the_batch_wait(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path,
) -> None:
    """The batch wait gathers a stream of mail into jobs; a mail that nothing follows goes
    QUIET_FLUSH after it came (worker/mail.py), not after the wait."""
    stack = Stack(redis_db_url(request, offset=5), postgres_url, tmp_path / "worker.log",
                  mail_batch_wait_seconds="600")
    listener = Listener(stack, tmp_path / "smtp.log")
    try:
        message = mail("Alone.", subject=f"Lone mail {uuid.uuid4().hex[:6]}")
        with listener.client() as client:
            client.send_message(message)
        assert processed(postgres_url, message_id(message), timeout=60)["status"] == \
            "processed"
    finally:
        listener.stop()
        stack.worker.stop()
