"""The Mail API's processing of stored messages, without a broker: ``process_mail`` on SQLite
and PostgreSQL with the demo records (account wdc, mail domain mail.eventdesk.local)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import make_url, select

from shared.db.engine import database_unreachable, session_scope
from shared.db.models import (
    Account,
    MailAttachment,
    MailMessage,
    Note,
    Person,
    Request,
    Transaction,
)
from shared.ids import make_transid
from shared.mail import service as mail_service
from shared.mail import store
from shared.mail.mime import message_id_of
from shared.mail.queries import Destination
from shared.mail.service import Accepting, MailConfig, MailIntake, process_mail
from shared.messaging.publish import TaskMessage
from shared.records.directory import Directory
from tests.conftest import wait_until
from tests.test_mail_smtp import free_port

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WDC = Destination("wdc", None, "wdc@mail.eventdesk.local")
NETWORK = Destination("wdc", 102, "network.wdc@mail.eventdesk.local")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def message(body: str, *, sender: str = "howard.tanner@widget.com", subject: str | None = None,
            message_id: str | None = None, **headers: str) -> tuple[bytes, str]:
    mail = EmailMessage()
    message_id = message_id or f"{uuid.uuid4().hex}@widget.com"
    mail["From"] = sender
    mail["To"] = "wdc@mail.eventdesk.local"
    mail["Subject"] = subject if subject is not None else f"Mail {uuid.uuid4().hex[:8]}"
    mail["Message-ID"] = f"<{message_id}>"
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(body)
    return bytes(mail), message_id


def new_mail(raw: bytes, destination: Destination = WDC, now: datetime = NOW) -> store.NewMail:
    """``raw`` as intake hands it to the store."""
    return store.NewMail(transid=make_transid(b"test-secret", "wdc"), destination=destination,
                         message_id=message_id_of(raw), raw=raw, peer="test", now=now)


def deliver(db: str, raw: bytes, destination: Destination = WDC, now: datetime = NOW,
            times: int = 1, config: MailConfig | None = None) -> dict[str, Any]:
    """Store ``raw`` as intake does, process it ``times`` times; the transaction's row."""
    with session_scope(db) as session:
        [(mail_id, transid)] = store.save(session, [new_mail(raw, destination, now)])
    assert mail_id is not None
    directory = Directory(0)
    for _ in range(times):
        with session_scope(db) as session:
            process_mail(session, [mail_id], now, directory, config)
    with session_scope(db) as session:
        row = session.get(Transaction, transid)
        assert row is not None
        mail = session.get(MailMessage, mail_id)
        assert mail is not None
        return {"status": row.status, "outcome": row.outcome or {}, "error": row.error,
                "mail_status": mail.status, "transid": transid}


def someone_else_can_lock(db: str, mail_id: int, wait: float = 0.0) -> bool:
    """Whether another connection gets the message's row lock (PostgreSQL) or the database's
    write lock (SQLite) within ``wait`` seconds."""
    if db.startswith("sqlite"):
        other = sqlite3.connect(make_url(db).database or "", timeout=wait)
        try:
            other.execute("UPDATE mail_messages SET status = status WHERE id = ?", (mail_id,))
            other.rollback()
            return True
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            return False
        finally:
            other.close()
    with psycopg.connect(make_url(db).set(drivername="postgresql").render_as_string(
            hide_password=False)) as locker:
        try:
            locker.execute(f"SET lock_timeout = '{max(1, int(wait * 1000))}ms'")
            locker.execute("SELECT id FROM mail_messages WHERE id = %s FOR UPDATE",
                           (mail_id,))
            return True
        except psycopg.errors.LockNotAvailable:
            return False


def test_a_run_holds_the_messages_it_took_until_it_commits(db: str) -> None:
    """So no other run acts on them, or matches a request of theirs, meanwhile: on SQLite,
    which has no row locks, the take makes the run the database's one writer."""
    raw, _ = message("held")
    with session_scope(db) as session:
        [(mail_id, _)] = store.save(session, [new_mail(raw)])
    assert mail_id is not None
    with session_scope(db) as session:
        [taken] = store.take(session, [mail_id])
        assert taken.id == mail_id
        assert not someone_else_can_lock(db, mail_id)
        store.finish(session, taken, "rejected")  # not left for another test's run to take
    assert someone_else_can_lock(db, mail_id, wait=10)


def request(db: str, request_id: int) -> Request:
    with session_scope(db) as session:
        found = session.get(Request, request_id)
        assert found is not None
        session.expunge(found)
        return found


def notes(db: str, request_id: int) -> list[tuple[str, bool]]:
    with session_scope(db) as session:
        return [(note.text, note.internal) for note in session.scalars(
            select(Note).where(Note.request_id == request_id).order_by(Note.id))]


def test_new_mail_makes_a_request_with_the_mail_defaults(db: str) -> None:
    raw, message_id = message("The printer is on fire.", subject="Printer on fire")
    done = deliver(db, raw)
    assert done["status"] == "completed"
    assert done["outcome"]["action"] == "created"
    made = request(db, done["outcome"]["request_id"])
    assert (made.source, made.source_id, made.subject) == ("Email", message_id,
                                                            "Printer on fire")
    assert made.created_by_id == made.requested_by_id == made.requested_for_id == 301
    assert made.category == "other"
    assert made.team_id == 101  # no team address: the service desk team of the agreement
    assert notes(db, made.id) == [("The printer is on fire.", False)]
    assert done["mail_status"] == "processed"


def test_team_address_and_other_email_of_the_sender(db: str) -> None:
    done = deliver(db, message("Link down", sender="NOC@widget.com")[0], NETWORK)
    made = request(db, done["outcome"]["request_id"])
    assert made.team_id == 102
    assert made.requested_for_id == 303  # Nick Wheeler, by one of his other addresses


def test_a_person_of_the_directory_account_may_send(db: str) -> None:
    with session_scope(db) as session:
        session.merge(Person(id=398, account_id="widget", name="Walter Widget",
                             primary_email="walter@widget.com", roles={}))
    done = deliver(db, message("Hello from the directory.", sender="walter@widget.com")[0])
    assert request(db, done["outcome"]["request_id"]).requested_for_id == 398


def test_inline_images_are_kept_and_listed_on_the_note(db: str) -> None:
    mail = EmailMessage()
    mail["From"] = "ellen.brown@widget.com"
    mail["Subject"] = f"Screenshot {uuid.uuid4().hex[:8]}"
    mail["Message-ID"] = f"<{uuid.uuid4().hex}@widget.com>"
    mail.set_content("See the picture.")
    mail.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<shot1>",
                     disposition="inline")
    done = deliver(db, bytes(mail))
    request_id = done["outcome"]["request_id"]
    assert notes(db, request_id) == [
        ("See the picture.\n\nAttachments: shot1 (image/png, 9 bytes)", False)]
    with session_scope(db) as session:
        kept = session.scalars(select(MailAttachment).where(
            MailAttachment.request_id == request_id)).all()
        assert [(item.filename, item.inline, item.content) for item in kept] == [
            ("shot1", True, b"\x89PNG fake")]


def test_specialist_parameters_and_what_is_ignored(db: str) -> None:
    body = ("#rfc\n#high\n#ci: CMP00023\n#colour: red\n#custom_field_7: blue\n#internal\n\n"
            "Please move the desktop.")
    done = deliver(db, message(body)[0])
    made = request(db, done["outcome"]["request_id"])
    assert (made.category, made.impact, made.ci_id) == ("rfc", "high", 501)
    assert notes(db, made.id) == [("Please move the desktop.", True)]
    assert done["outcome"]["ignored"] == {"colour": "is not a Mail API parameter"}
    with session_scope(db) as session:
        row = session.get(Transaction, done["transid"])
        assert row is not None
        assert row.parameters["custom_field_7"] == "blue"


def test_parameters_of_an_end_user_are_ignored_and_said_so(db: str) -> None:
    done = deliver(db, message("#rfc\n\nhelp", sender="ellen.brown@widget.com")[0])
    made = request(db, done["outcome"]["request_id"])
    assert made.category == "other"
    assert "Specialist" in done["outcome"]["ignored"]["parameters"]
    assert notes(db, made.id) == [("help", False)]


def test_reply_by_in_reply_to_becomes_a_note_and_parameters_do_not_update(db: str) -> None:
    first = deliver(db, message("Disk full", sender="ellen.brown@widget.com")[0])
    request_id = first["outcome"]["request_id"]
    original_id = request(db, request_id).source_id
    reply, _ = message("#completed\n\nStill full", sender="ellen.brown@widget.com",
                       subject="Re: Disk full", In_Reply_To=f"<{original_id}>")
    done = deliver(db, reply, now=NOW + timedelta(hours=1))
    assert done["outcome"]["action"] == "updated"
    assert done["outcome"]["request_id"] == request_id
    assert "In-Reply-To" in done["outcome"]["reason"]
    assert notes(db, request_id)[-1] == ("Still full", False)
    assert request(db, request_id).status == "assigned"
    # A reply to the reply threads through it (References) onto the same request.
    again, _ = message("And now?", sender="ellen.brown@widget.com", subject="Re: Re: Disk",
                       References=f"<{original_id}> <nobody@x>")
    assert deliver(db, again, now=NOW + timedelta(hours=2))["outcome"]["request_id"] == \
        request_id


@pytest.mark.parametrize(("age", "threads"), [
    (timedelta(days=28), True), (timedelta(days=28, seconds=1), False)])
def test_request_id_in_the_subject_within_the_feedback_window(
    db: str, age: timedelta, threads: bool,
) -> None:
    with session_scope(db) as session:
        request_id = 900_000 + int(uuid.uuid4().int % 99_999)
        session.add(Request(id=request_id, account_id="wdc", subject="Old one", status="assigned",
                            requested_for_id=302, created_at=NOW - age, updated_at=NOW - age))
    done = deliver(db, message("Any news?", sender="ellen.brown@widget.com",
                               subject=f"Re: Request #{request_id}")[0])
    assert (done["outcome"]["request_id"] == request_id) is threads
    assert done["outcome"]["action"] == ("updated" if threads else "created")


def test_a_reply_to_someone_elses_request_is_a_new_request(db: str) -> None:
    first = deliver(db, message("Mine", sender="ellen.brown@widget.com")[0])
    request_id = first["outcome"]["request_id"]
    done = deliver(db, message("Not mine", sender="howard.tanner@widget.com",
                               subject=f"Re: {request_id:06d}")[0])
    assert done["outcome"]["request_id"] == request_id  # a Specialist of wdc may
    stranger = deliver(db, message("Not mine either", subject=f"Re: {request_id:06d}",
                                   sender="ellen.brown@widget.com")[0])
    assert stranger["outcome"]["request_id"] == request_id  # her own
    with session_scope(db) as session:
        session.add(Request(id=request_id + 1_000_000, account_id="wdc", subject="x",
                            status="assigned", requested_for_id=301, created_at=NOW,
                            updated_at=NOW))
    other = deliver(db, message("Nosy", sender="ellen.brown@widget.com",
                                subject=f"Re: {request_id + 1_000_000}")[0])
    assert other["outcome"]["action"] == "created"


def test_unknown_sender_is_rejected_and_hostile_mail_quarantined(db: str) -> None:
    unknown = deliver(db, message("hi", sender="stranger@example.org")[0])
    assert unknown["status"] == "failed"
    assert unknown["mail_status"] == "rejected"
    assert "stranger@example.org" in unknown["error"]
    hostile = (b"From: howard.tanner@widget.com\nContent-Type: multipart/mixed; boundary=b\n\n"
               + b"--b\nContent-Type: text/plain\n\nx\n" * 10_000)
    quarantined = deliver(db, hostile)
    assert quarantined["status"] == "failed"
    assert quarantined["mail_status"] == "quarantined"
    assert "Quarantined: more than 500 MIME parts" in quarantined["error"]


def test_processed_twice_makes_one_request(db: str) -> None:
    raw, message_id = message("Once only", subject=f"Once {uuid.uuid4().hex}")
    done = deliver(db, raw, times=2)
    with session_scope(db) as session:
        made = session.scalars(select(Request).where(Request.source_id == message_id)).all()
    assert len(made) == 1
    assert done["outcome"]["action"] == "created"


@pytest.fixture
def policy(db: str) -> Iterator[Callable[..., None]]:
    """Set wdc's Email Policy for one test; the defaults again afterwards."""

    def apply(**options: object) -> None:
        with session_scope(db) as session:
            account = session.get(Account, "wdc")
            assert account is not None
            account.mail_policy = dict(options)

    yield apply
    apply()


@pytest.fixture
def relay() -> Iterator[tuple[str, list[bytes]]]:
    """A test SMTP relay that keeps what it is sent."""
    received: list[bytes] = []

    class Keep:
        async def handle_DATA(self, server: object, session: object,  # noqa: ARG002
                              envelope: Any) -> str:
            received.append(envelope.original_content)
            return "250 OK"

    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    yield f"127.0.0.1:{port}", received
    controller.stop()


def test_policy_without_new_requests_rejects_and_replies(
    db: str, policy: Callable[..., None], relay: tuple[str, list[bytes]],
) -> None:
    policy(create_requests=False)
    address, received = relay
    config = MailConfig(relay=address)
    done = deliver(db, message("Help!", sender="ellen.brown@widget.com",
                               subject="Laptop broken")[0], config=config)
    assert (done["status"], done["mail_status"]) == ("failed", "rejected")
    assert "does not allow email to create requests" in done["error"]
    wait_until(lambda: received, 10)
    reply = message_from_bytes(received[0], policy=email_policy.default)
    assert reply["To"] == "ellen.brown@widget.com"
    assert reply["Subject"] == "Email Rejected: Laptop broken"
    assert reply["Auto-Submitted"] == "auto-replied"
    # An automatic message is rejected without a reply: no mail loops.
    deliver(db, message("Out of office", sender="ellen.brown@widget.com",
                        Auto_Submitted="auto-replied")[0], config=config)
    time.sleep(0.5)
    assert len(received) == 1


def test_policy_without_replies_as_notes_makes_new_requests(
    db: str, policy: Callable[..., None],
) -> None:
    first = deliver(db, message("Broken", sender="ellen.brown@widget.com")[0])
    policy(replies_as_notes=False)
    original = request(db, first["outcome"]["request_id"]).source_id
    reply = deliver(db, message("Still broken", sender="ellen.brown@widget.com",
                                In_Reply_To=f"<{original}>")[0])
    assert reply["outcome"]["action"] == "created"


def test_an_invalid_policy_rejects_with_the_reason(db: str, policy: Callable[..., None]) -> None:
    policy(create_requests="sometimes")
    done = deliver(db, message("x")[0])
    assert done["mail_status"] == "rejected"
    assert "Email Policy of wdc is invalid" in done["error"]


@pytest.mark.parametrize(("options", "auth", "results", "acts_for", "ignored"), [
    ({"allow_from": True, "from_secret": "S3CRET"}, "S3CRET",
     "mx.widget.com; dmarc=pass header.from=example.com", 302, None),
    ({}, "S3CRET", "mx.widget.com; dmarc=pass header.from=example.com", None,
     "does not allow #from"),
    ({"allow_from": True, "from_secret": "S3CRET"}, "wrong",
     "mx.widget.com; dmarc=pass header.from=example.com", None, "X-4me-Auth"),
    ({"allow_from": True, "from_secret": "S3CRET"}, "S3CRET",
     "mx.widget.com; dmarc=fail header.from=example.com", None, "no DMARC pass"),
    ({"allow_from": True, "from_secret": "S3CRET"}, "S3CRET",
     "forged.example; dmarc=pass header.from=example.com", None, "no DMARC pass"),
])
def test_x_4me_from_acts_for_someone_else_only_when_allowed(
    db: str, policy: Callable[..., None], options: dict[str, object], auth: str, results: str,
    acts_for: int | None, ignored: str | None,
) -> None:
    # The seed's example: a web form's address, on behalf of someone else.
    policy(**options)
    with session_scope(db) as session:
        session.merge(Person(id=399, account_id="wdc", name="Demo Request Webform",
                             primary_email="demo-request-webform@example.com"))
    raw, _ = message("I would like to request a demo of your product.",
                     sender="demo-request-webform@example.com",
                     subject="Request for product demo", X_4me_From="ellen.brown@widget.com",
                     X_4me_Auth=auth, Authentication_Results=results)
    done = deliver(db, raw, config=MailConfig(authserv_ids=frozenset({"mx.widget.com"})))
    made = request(db, done["outcome"]["request_id"])
    assert made.requested_for_id == (acts_for or 399)
    assert made.created_by_id == made.requested_by_id == made.requested_for_id
    if ignored:
        assert ignored in done["outcome"]["ignored"]["X-4me-From"]
    else:
        assert "ignored" not in done["outcome"]


def test_policy_auto_creates_a_person_for_an_unknown_sender(
    db: str, policy: Callable[..., None],
) -> None:
    policy(auto_create_people=True)
    address = f"new.{uuid.uuid4().hex[:8]}@example.org"
    done = deliver(db, message("Hello, I am new", sender=f"New Person <{address}>")[0])
    assert done["status"] == "completed"
    made = request(db, done["outcome"]["request_id"])
    with session_scope(db) as session:
        person = session.get(Person, made.requested_for_id)
        assert person is not None
        assert (person.account_id, person.name, person.primary_email, person.roles) == \
            ("wdc", "New Person", address, {})
    # The next mail from the same address finds that person.
    again = deliver(db, message("Me again", sender=address)[0])
    assert request(db, again["outcome"]["request_id"]).requested_for_id == person.id


def test_the_email_policy_is_imported_and_exported_with_the_account(db: str) -> None:
    from shared.records.importer import export_records, import_records

    account = f"mail{uuid.uuid4().hex[:8]}"
    with session_scope(db) as session:
        import_records(session, {"accounts": [{
            "id": account, "name": "Mail test", "mail_domain": "mail.example.org",
            "mail_policy": {"create_requests": False, "feedback_days": 7}}]})
    with session_scope(db) as session:
        exported = {item["id"]: item for item in export_records(session)["accounts"]}
    assert exported[account]["mail_policy"] == {"create_requests": False, "feedback_days": 7}
    assert exported["wdc"]["mail_policy"] == {}


def one_run(db: str, raws: list[bytes], now: datetime = NOW, *,
            along: bool = False) -> list[dict[str, Any]]:
    """Store the messages, then process them in one run: as one task naming them all, or
    (``along``) as a task naming the first that takes the others along. The outcome of each,
    in order."""
    with session_scope(db) as session:
        stored = store.save(session, [new_mail(raw, now=now) for raw in raws])
    ids = [mail_id for mail_id, _ in stored if mail_id is not None]
    with session_scope(db) as session:
        if along:
            process_mail(session, ids[:1], now, Directory(0), along=len(ids) - 1)
        else:
            process_mail(session, ids, now, Directory(0))
    return outcomes_of(db, [transid for _, transid in stored])


def outcomes_of(db: str, transids: list[str]) -> list[dict[str, Any]]:
    """The outcome of each transaction, in order."""
    outcomes: list[dict[str, Any]] = []
    with session_scope(db) as session:
        for transid in transids:
            row = session.get(Transaction, transid)
            assert row is not None
            assert row.outcome is not None
            outcomes.append(row.outcome)
    return outcomes


def test_mail_taken_along_acts_as_one_mail_after_another(db: str) -> None:
    """One task's run: a new request, a reply to it, and a copy event matching folds into it,
    all stored before any is processed."""
    subject = f"Along {uuid.uuid4().hex[:8]}"
    first, first_id = message("The VPN is down.", sender="ellen.brown@widget.com",
                              subject=subject)
    reply, _ = message("Still down.", sender="ellen.brown@widget.com", subject=f"Re: {subject}",
                       In_Reply_To=f"<{first_id}>")
    copy, _ = message("The VPN is down.", sender="ellen.brown@widget.com", subject=subject)
    # Received before any other test's mail, so that they are the ones taken along (other
    # tests leave stored messages unprocessed in this database).
    outcomes = one_run(db, [first, reply, copy], NOW - timedelta(days=3650), along=True)
    request_id = outcomes[0]["request_id"]
    assert [(outcome["action"], outcome["request_id"]) for outcome in outcomes] == [
        ("created", request_id), ("updated", request_id), ("unchanged", request_id)]
    assert "In-Reply-To" in outcomes[1]["reason"]
    assert outcomes[2]["match"] == "subject"
    assert notes(db, request_id) == [("The VPN is down.", False), ("Still down.", False)]


def test_mail_taken_along_finds_a_request_of_the_same_run_by_its_source(db: str) -> None:
    """A Specialist's mail that names the source and sourceID of a request an earlier mail of
    the same run makes is its note, as it would be processed one after the other; a mail of
    the run that names neither is a request of its own."""
    source_id = f"db1-{uuid.uuid4().hex[:8]}"
    first, _ = message(f"#source: nagios\n#sourceID: {source_id}\n\nDisk 90% full on db1.")
    other, _ = message("Printer out of paper.")
    update, _ = message(f"#source: nagios\n#sourceID: {source_id}\n\nDisk 95% full.")
    outcomes = one_run(db, [first, other, update])
    assert [outcome["action"] for outcome in outcomes] == [
        "created", "created", "updated"]
    request_id = outcomes[0]["request_id"]
    assert outcomes[1]["request_id"] != request_id
    assert (outcomes[2]["request_id"], outcomes[2]["reason"]) == (
        request_id, "the request's source and sourceID")
    assert notes(db, request_id) == [("Disk 90% full on db1.", False), ("Disk 95% full.", False)]


# How intake commits: a thread's (the HTTP intake's), and on PostgreSQL the SMTP listener's loop
# (not on Windows, whose default loop psycopg cannot wait on: the listener uses its thread pool).
WAYS = ["thread"] if sys.platform == "win32" else ["thread", "loop"]


class Published:
    """A broker for MailIntake that keeps the ids of each mail.process task."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def publish(self, message: TaskMessage, _costs: object) -> None:
        self.ids += json.loads(message.body)[0][0]


def commit(intake: MailIntake, entries: list[Accepting], way: str,
           monkeypatch: pytest.MonkeyPatch) -> None:
    """As the HTTP intake commits (a thread's), or as the SMTP listener does on PostgreSQL (on
    its loop: the thread's connection, if it were used, fails every message as a bug)."""
    if way == "loop":
        with monkeypatch.context() as patch:
            patch.setattr(mail_service, "_STORE", None)
            asyncio.run(intake.commit_async(entries))
    else:
        intake.commit(entries)


@pytest.mark.postgres
@pytest.mark.parametrize("way", WAYS)
def test_a_message_the_database_refuses_does_not_refuse_the_others_of_its_group(
    postgres_url: str, configure: Callable[..., None], way: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Intake's group commit: a message whose row fails (an address longer than its column,
    which no recipient the listener accepts can be) is refused alone; the messages committed
    with it are stored and queued."""
    configure(database_url=postgres_url)
    broker = Published()
    intake = MailIntake(broker, b"test-secret", 10**6)  # type: ignore[arg-type]
    bad = Destination("wdc", None, "x" * 400 + "@mail.eventdesk.local")
    entries = [entry for number, destination in enumerate([WDC, bad, WDC])
               for entry in intake.prepare(message(f"Mail {number}")[0], [destination], "test",
                                           NOW)]
    commit(intake, entries, way, monkeypatch)
    assert [entry.error is None for entry in entries] == [True, False, True]
    # Queued by the time the commit returns (before the 250s), the first lot going at once.
    assert broker.ids == [entries[0].mail_id, entries[2].mail_id]
    with session_scope(postgres_url) as session:
        assert set(session.scalars(select(MailMessage.transid).where(MailMessage.transid.in_(
            [entry.transid for entry in entries])))) == {entries[0].transid, entries[2].transid}


@pytest.mark.postgres
@pytest.mark.parametrize("way", WAYS)
def test_a_message_sent_again_is_the_stored_one(
    postgres_url: str, configure: Callable[..., None], way: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender did not see our 250 and sends the message again (same Message-ID): it is
    not stored twice; it gets the first copy's transid, and its id to queue again while no
    worker has processed it (the first listener may have died before its publish)."""
    configure(database_url=postgres_url)
    intake = MailIntake(Published(), b"test-secret", 10**6)  # type: ignore[arg-type]
    raw = message("Printer out of paper.")[0]
    [first] = intake.prepare(raw, [WDC], "test", NOW)
    commit(intake, [first], way, monkeypatch)
    again = intake.prepare(raw, [WDC], "test", NOW) + intake.prepare(
        message("Another mail.")[0], [WDC], "test", NOW)
    commit(intake, again, way, monkeypatch)
    assert [(entry.error, entry.transid, entry.mail_id) for entry in again[:1]] == [
        (None, first.transid, first.mail_id)]
    assert again[1].error is None
    assert again[1].mail_id not in (None, first.mail_id)


@pytest.mark.postgres
@pytest.mark.parametrize("way", WAYS)
def test_a_database_that_cannot_be_reached_refuses_every_message_as_an_outage(
    configure: Callable[..., None], way: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing is stored, and each message's error is the database's outage: the listener
    answers 451 and the senders try again."""
    configure(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    intake = MailIntake(Published(), b"test-secret", 10**6)  # type: ignore[arg-type]
    entries = [entry for number in range(3) for entry in intake.prepare(
        message(f"Mail {number}")[0], [WDC], "test", NOW)]
    commit(intake, entries, way, monkeypatch)
    assert all(entry.error is not None and database_unreachable(entry.error)
               for entry in entries)
    assert [entry.mail_id for entry in entries] == [None] * 3


WHEN = datetime(2026, 12, 24, 10, 0, tzinfo=UTC)
# Every parameter the seed lists, one mail each (Howard Tanner: Specialist and Service Desk
# Analyst of wdc), with what the new request (or its note) shows for it.
SEED_PARAMETERS: list[tuple[str, str, str, object]] = [
    ("category", "#category: rfc", "category", "rfc"),
    ("ci", "#ci: ABC1234", "ci_id", 502),
    ("ci_id", "#ci_id: 501", "ci_id", 501),
    ("ci_source", "#ci_source: CMDB\n#ci_sourceID: db-expense-prod-01", "ci_id", 502),
    ("ci_sourceID", "#ci_sourceID: db-expense-prod-01", "ci_id", 502),
    ("completion_reason", "#status: completed\n#completion_reason: workaround",
     "completion_reason", "workaround"),
    ("desired_completion_at", "#desired_completion_at: 2026-12-24T10:00:00Z",
     "desired_completion_at", WHEN),
    ("downtime_end_at", "#downtime_end_at: 2026-12-24T10:00:00Z", "downtime_end_at", WHEN),
    ("downtime_start_at", "#downtime_start_at: 2026-12-24T10:00:00Z", "downtime_start_at",
     WHEN),
    ("impact", "#impact: high", "impact", "high"),
    ("internal", "#internal", "note internal", True),
    ("markdown", "#markdown", "note markdown", True),
    ("member", "#member: nick.wheeler@widget.com", "member_id", 303),
    ("member_id", "#member_id: 303", "member_id", 303),
    ("problem_id", "#problem_id: 501", "problem_id", 501),
    ("requested_for", "#requested_for: ellen.brown@widget.com", "requested_for_id", 302),
    ("requested_for_id", "#requested_for_id: 302", "requested_for_id", 302),
    ("service_instance", "#service_instance: Houston Office Network", "service_instance_id",
     401),
    ("service_instance_id", "#service_instance_id: 401", "service_instance_id", 401),
    ("source", "#source: nagios", "source", "nagios"),
    ("sourceID", "#sourceID: nagios-4711", "source_id", "nagios-4711"),
    ("status", "#status: in_progress", "status", "in_progress"),
    ("supplier", "#supplier: Widget Data Center", "supplier_id", 201),
    ("supplier_id", "#supplier_id: 201", "supplier_id", 201),
    ("supplier_requestID", "#supplier_id: 201\n#supplier_requestID: WDC-77",
     "supplier_request_id", "WDC-77"),
    ("support_domain", "#support_domain: wdc", "parameter support_domain", "wdc"),
    ("team", "#team: Network Operations", "team_id", 102),
    ("team_id", "#team_id: 102", "team_id", 102),
    ("template_id", "#template_id: 1234", "template_id", 1234),
    ("time_spent", "#time_spent: 15", "note time_spent", 15),
    ("waiting_until", "#status: waiting_for\n#waiting_until: 2026-12-24T10:00:00Z",
     "waiting_until", WHEN),
    ("workflow_id", "#workflow_id: 601", "workflow_id", 601),
    ("custom_field_<id>", "#custom_field_7: blue", "custom field 7", "blue"),
]


def shown(db: str, transid: str, request_id: int, what: str) -> object:
    """What the request, its first note or its transaction shows for ``what``."""
    with session_scope(db) as session:
        if what.startswith("note "):
            note = session.scalars(select(Note).where(Note.request_id == request_id)).first()
            return getattr(note, what.removeprefix("note "))
        if what.startswith("parameter "):
            row = session.get(Transaction, transid)
            assert row is not None
            return row.parameters.get(what.removeprefix("parameter "))
        made = session.get(Request, request_id)
        assert made is not None
        if what.startswith("custom field "):
            return made.references["custom_fields"][what.rsplit(" ", 1)[1]]
        value = getattr(made, what)
        # SQLite gives back naive UTC times.
        return value.replace(tzinfo=UTC) if isinstance(value, datetime) else value


@pytest.mark.parametrize(("day", "lines", "what", "expected"),
                         [(day, *item[1:]) for day, item in enumerate(SEED_PARAMETERS)],
                         ids=[item[0] for item in SEED_PARAMETERS])
def test_every_parameter_of_the_seed_sets_its_field(
    db: str, day: int, lines: str, what: str, expected: object,
) -> None:
    # A day of its own, well after the other tests' mail: the mails that name the same CI
    # would otherwise fold into one request by event matching (24 hours).
    now = NOW + timedelta(days=100 + 2 * day)
    done = deliver(db, message(f"{lines}\n\nSee the subject.")[0], now=now)
    assert done["outcome"]["action"] == "created", done["outcome"]
    assert "ignored" not in done["outcome"], done["outcome"]
    assert shown(db, done["transid"], done["outcome"]["request_id"], what) == expected


def test_the_raw_message_is_stored_byte_for_byte(db: str) -> None:
    """Intake stores every byte it was given (8-bit, NUL, CR LF), whatever the statement's
    encoding of it, and a copy sent again is the first one's."""
    raw = (b"From: howard.tanner@widget.com\r\nSubject: caf\xc3\xa9 \xff\r\n"
           b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@widget.com>\r\n\r\n\x00\x01\xfe\r\n")
    with session_scope(db) as session:
        first, again = store.save(session, [new_mail(raw), new_mail(raw)])
    assert first[1] == again[1]
    with session_scope(db) as session:
        row = session.get(MailMessage, first[0])
        assert row is not None
        assert row.raw == raw


def test_a_reply_waits_for_a_mail_of_its_run_that_event_matching_folds_into_its_request(
    db: str,
) -> None:
    """A mail of the run that event matching makes a note of an open request comes before a
    later reply to that request, as one mail after another would: the notes keep their order."""
    when = NOW + timedelta(days=300)  # apart from the other tests' requests of this CI
    first, first_id = message(f"#ci: ABC1234\n\nDatabase slow {uuid.uuid4().hex[:6]}.")
    made = deliver(db, first, now=when)
    assert made["outcome"]["action"] == "created"
    request_id = made["outcome"]["request_id"]
    # The CI's open request of the last 24 hours: the same CI folds into it.
    same_ci, _ = message("#ci: ABC1234\n\nStill slow, from the monitor.")
    reply, _ = message("Any news?", subject="Re: Database slow", In_Reply_To=f"<{first_id}>")
    outcomes = one_run(db, [same_ci, reply], when + timedelta(minutes=5))
    assert [(outcome["action"], outcome["request_id"]) for outcome in outcomes] == [
        ("updated", request_id), ("updated", request_id)]
    assert [text for text, _ in notes(db, request_id)][1:] == [
        "Still slow, from the monitor.", "Any news?"]
