"""A worker's job through the transactions service (``process_job``), and a mail job through
the Mail API's (shared/mail/service.py), without a broker, on SQLite and on PostgreSQL: what
becomes of its events or mail when the database is unreachable, and when one cannot be
processed.

The worker-level counterparts, with a real worker and broker: tests/resilience/
test_database_outage.py and test_poison.py.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shared.db.engine import session_scope
from shared.db.models import Account, MailMessage, NotificationDelivery, Request, Transaction
from shared.mail import service, store
from shared.records.directory import AccountRecords, Directory
from shared.transactions.failures import Backoff
from shared.transactions.schemas import EventBatch
from shared.transactions.service import process_job
from tests.test_mail_processing import message, new_mail

HOOK = "https://example.com/hook"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def unreachable(db: str, tmp_path: Path) -> Iterator[str]:
    """The database's URL as a worker cut off from it sees it: a SQLite file that cannot be
    opened (a directory), a PostgreSQL port that refuses connections (bound, never listening)."""
    if db.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}"
        return
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield db.replace(":5432/", f":{closed.getsockname()[1]}/")


def batch(*events: dict[str, Any], **fields: Any) -> EventBatch:
    return EventBatch.model_validate({
        "channel": "4me", "account_id": "wdc", "received_at": datetime.now(UTC),
        "events": [{"transid": uuid.uuid4().hex, **event} for event in events], **fields,
    })


def good(source_id: str, number: int) -> dict[str, Any]:
    return {"parameters": {"subject": f"{source_id} {number}", "source": "nagios",
                           "sourceID": f"{source_id}-{number}"}}


def statuses(db: str, batches: list[EventBatch]) -> list[str | None]:
    with session_scope(db) as session:
        found = dict(session.execute(select(Transaction.transid, Transaction.status).where(
            Transaction.transid.in_([e.transid for b in batches for e in b.events]))).all())
    return [found.get(event.transid) for b in batches for event in b.events]


def test_an_outage_gives_the_job_back_after_a_growing_pause_and_fails_nothing(
    db: str, unreachable: str
) -> None:
    pauses: list[float] = []
    backoff = Backoff(sleep=pauses.append)
    source_id = uuid.uuid4().hex
    job = [batch(good(source_id, 1), good(source_id, 2)), batch(good(source_id, 3))]
    # However long the outage, the job only goes back to the queue: no retry budget runs out.
    for _ in range(9):
        assert process_job(job, Directory(0), backoff, unreachable) is None
    assert pauses == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert statuses(db, job) == [None, None, None]

    # The database is back: the redelivered job completes, and the next outage starts over.
    assert process_job(job, Directory(0), backoff, db) == []
    assert statuses(db, job) == ["completed", "completed", "completed"]
    assert process_job(job, Directory(0), backoff, unreachable) is None
    assert pauses[-1] == 0.5


class BrokenDirectory(Directory):
    """Reference records that raise an error of ours (a bug) for one account."""

    def __init__(self, broken: str) -> None:
        super().__init__(0)
        self.broken = broken

    def account(self, session: Any, account_id: str) -> AccountRecords | None:
        if account_id == self.broken:
            raise RuntimeError("the directory lost its records")
        return super().account(session, account_id)


@pytest.fixture
def broken_account(db: str) -> str:
    account_id = f"broken-{uuid.uuid4().hex[:8]}"
    with session_scope(db) as session:
        session.add(Account(id=account_id, name="Broken"))
    return account_id


@pytest.mark.parametrize("fault", ["data", "bug"])
def test_a_failing_event_fails_alone_once_and_its_neighbours_complete(
    db: str, broken_account: str, fault: str
) -> None:
    # A lone surrogate cannot be stored by either database; the directory's error is ours.
    poison = (batch({"correlationid": "a\ud800b", **good("p", 0)}, notifyurl=HOOK)
              if fault == "data" else batch(good("p", 0), account_id=broken_account,
                                            notifyurl=HOOK))
    pauses: list[float] = []
    backoff = Backoff(sleep=pauses.append)
    source_id = uuid.uuid4().hex
    job = [batch(*(good(source_id, n) for n in range(1, 6))), poison,
           batch(*(good(source_id, n) for n in range(6, 9)))]
    ids = process_job(job, BrokenDirectory(broken_account), backoff, db)

    assert statuses(db, job) == ["completed"] * 5 + ["failed"] + ["completed"] * 3
    with session_scope(db) as session:
        failed = session.get(Transaction, poison.events[0].transid)
        assert failed is not None
        (payload,) = session.scalars(select(NotificationDelivery.payload).where(
            NotificationDelivery.id.in_(ids or [])))
        made = session.scalars(select(Request.source_id).where(
            Request.source_id.like(f"{source_id}-%"))).all()
    assert (payload["status"], payload["code"]) == (
        "failed", "7004" if fault == "data" else "7005")
    # The reason is the encoder's or the database's message, not the statement of the run.
    assert "surrogate" in (failed.error or "") if fault == "data" else (
        failed.error == "RuntimeError: the directory lost its records")
    assert len(made) == 8
    assert pauses == []

    # Delivered again, the job changes nothing: the failure was recorded once.
    assert process_job(job, BrokenDirectory(broken_account), backoff, db) == []
    with session_scope(db) as session:
        again = session.get(Transaction, poison.events[0].transid)
        assert again is not None
    assert (again.status, again.completed_at) == ("failed", failed.completed_at)


# -- the Mail API's job (shared/mail/service.py's process_job) ----------------------------------

def stored_mail(db: str, count: int) -> list[int]:
    """``count`` new messages stored as intake stores them; their ids."""
    with session_scope(db) as session:
        saved = store.save(session, [new_mail(message(f"Mail {number}")[0])
                                     for number in range(count)])
    return [mail_id for mail_id, _ in saved if mail_id is not None]


def mail_statuses(db: str, mail_ids: list[int]) -> list[str]:
    with session_scope(db) as session:
        rows = {row.id: row.status for row in session.scalars(
            select(MailMessage).where(MailMessage.id.in_(mail_ids)))}
    return [rows[mail_id] for mail_id in mail_ids]


def test_mail_of_a_job_waits_out_an_outage_then_is_processed(
    db: str, unreachable: str,
) -> None:
    ids = stored_mail(db, 3)
    pauses: list[float] = []
    backoff = Backoff(sleep=pauses.append)
    directory = Directory(0)
    assert service.process_job(ids, directory, service.MailConfig(), backoff,
                            database_url=unreachable) is False
    assert service.process_job(ids, directory, service.MailConfig(), backoff,
                            database_url=unreachable) is False
    assert pauses == [0.5, 1]
    assert mail_statuses(db, ids) == ["received"] * 3
    assert service.process_job(ids, directory, service.MailConfig(), backoff,
                               database_url=db) is True
    assert mail_statuses(db, ids) == ["processed"] * 3


def test_a_mail_that_fails_is_failed_once_and_its_neighbours_are_processed(
    db: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = stored_mail(db, 3)
    act = service._act

    def failing(session: Any, row: Any, *args: Any, **kwargs: Any) -> Any:
        if row.id == ids[1]:
            raise ValueError("a bug met by this message alone")
        return act(session, row, *args, **kwargs)

    monkeypatch.setattr(service, "_act", failing)
    pauses: list[float] = []
    assert service.process_job(ids, Directory(0), service.MailConfig(),
                               Backoff(sleep=pauses.append), database_url=db) is True
    assert pauses == []
    assert mail_statuses(db, ids) == ["processed", "failed", "processed"]
    with session_scope(db) as session:
        row = session.get(MailMessage, ids[1])
        assert row is not None
        failed = session.get(Transaction, row.transid)
        assert failed is not None
        assert failed.status == "failed"
        assert "a bug met by this message alone" in str(failed.error)


def test_a_mail_that_fails_in_a_run_it_was_taken_along_to_fails_no_other(
    db: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job of one message takes the older stored one along: that one's error ends neither;
    the job's own message is processed, and the other is left to the task that names it."""
    poison, own = stored_mail(db, 2)
    act = service._act

    def failing(session: Any, row: Any, *args: Any, **kwargs: Any) -> Any:
        if row.id == poison:
            raise ValueError("a bug met by the message taken along")
        return act(session, row, *args, **kwargs)

    monkeypatch.setattr(service, "_act", failing)
    config, backoff = service.MailConfig(), Backoff(sleep=lambda _: None)
    assert service.process_job([own], Directory(0), config, backoff, along=50,
                               database_url=db) is True
    assert mail_statuses(db, [poison, own]) == ["received", "processed"]
    assert service.process_job([poison], Directory(0), config, backoff, along=50,
                               database_url=db) is True
    assert mail_statuses(db, [poison, own]) == ["failed", "processed"]


def test_a_mail_whose_failure_cannot_be_recorded_is_left_to_the_sweep_not_requeued(
    db: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = stored_mail(db, 1)

    def broken(*_: Any, **__: Any) -> Any:
        raise ValueError("a bug")

    monkeypatch.setattr(service, "_act", broken)
    monkeypatch.setattr(service, "fail_mail", broken)
    pauses: list[float] = []
    assert service.process_job(ids, Directory(0), service.MailConfig(),
                               Backoff(sleep=pauses.append), database_url=db) is True
    assert pauses == []
    assert mail_statuses(db, ids) == ["received"]
