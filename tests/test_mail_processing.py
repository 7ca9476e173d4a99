"""The Mail API's processing of stored messages, without a broker: ``process_mail`` on SQLite
and PostgreSQL with the demo records (account wdc, mail domain mail.eventdesk.local)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import select

from shared.db.engine import session_scope
from shared.db.models import MailMessage, Note, Request, Transaction
from shared.ids import make_transid
from shared.mail import store
from shared.mail.queries import Destination
from shared.mail.service import process_mail
from shared.records.directory import Directory

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


def deliver(db: str, raw: bytes, destination: Destination = WDC, now: datetime = NOW,
            times: int = 1) -> dict[str, Any]:
    """Store ``raw`` as intake does, process it ``times`` times; the transaction's row."""
    from shared.mail.mime import message_id_of

    with session_scope(db) as session:
        mail_id, transid = store.save(
            session, transid=make_transid(b"test-secret", "wdc"), destination=destination,
            message_id=message_id_of(raw), raw=raw, peer="test", now=now)
    assert mail_id is not None
    directory = Directory(0)
    for _ in range(times):
        with session_scope(db) as session:
            process_mail(session, mail_id, now, directory)
    with session_scope(db) as session:
        row = session.get(Transaction, transid)
        assert row is not None
        mail = session.get(MailMessage, mail_id)
        assert mail is not None
        return {"status": row.status, "outcome": row.outcome or {}, "error": row.error,
                "mail_status": mail.status, "transid": transid}


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
