"""Writes of the Mail API: the raw message (the durable point of intake), its processing state,
a reply's note, and the attachments kept apart (in the database, or as files in a directory)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db import dialect
from shared.db.models import MailAttachment, MailMessage, Note, Person, Request, Transaction
from shared.mail.mime import Attachment
from shared.mail.queries import Destination, attachment_path, stored, stored_query
from shared.requests.matching import note_hash


@dataclass(frozen=True)
class NewMail:
    """A message to store, as intake received it."""

    transid: str  # new for every message
    destination: Destination
    message_id: str | None
    raw: bytes
    peer: str
    now: datetime


def save(connection: dialect.Executor, mails: Sequence[NewMail]) -> list[tuple[int | None, str]]:
    """Store the messages in one statement (atomic even where each statement commits by
    itself: intake's HeldConnection on PostgreSQL); returns, for each in order, the id of a row
    to queue and the message's transid.

    A message already stored for its account (same Message-ID: the sender did not see our
    answer and sends it again, or sends it twice at once, the copies perhaps in the same call)
    is not stored twice: its transid is the first copy's, and its id is given only while no
    worker has processed it (the first intake may have died between its commit and its
    publish: the retry queues it, instead of leaving it to the sweep). A new message costs no
    look before the insert.
    """
    inserted: dict[str, int] = dict(dialect.insert_few(
        connection, MailMessage, _rows(mails), returning=("transid", "id"),
        skip_conflicts_on=("account_id", "message_id")))
    return _saved(mails, inserted, {mail.transid: stored(connection, *key)
                                    for mail, key in _conflicting(mails, inserted)})


async def save_async(connection: psycopg.AsyncConnection[Any], mails: Sequence[NewMail]
                     ) -> list[tuple[int | None, str]]:
    """:func:`save` on an event loop (the SMTP listener's, through
    shared/db/engine.LoopConnection)."""
    inserted: dict[str, int] = dict(await dialect.insert_few_async(
        connection, MailMessage, _rows(mails), returning=("transid", "id"),
        skip_conflicts_on=("account_id", "message_id")))
    known: dict[str, tuple[int, str, str] | None] = {}
    for mail, key in _conflicting(mails, inserted):
        found = await dialect.fetch_async(connection, stored_query(*key))
        known[mail.transid] = found[0] if found else None
    return _saved(mails, inserted, known)


def _rows(mails: Sequence[NewMail]) -> list[dict[str, Any]]:
    # In the order received: ids follow it, and a worker acts on a run in id order. (Two
    # groups that hold the same two resent messages in opposite orders may deadlock: the
    # database ends one, an outage for its senders, who send again.)
    return [{"transid": mail.transid, "account_id": mail.destination.account_id,
             "recipient": mail.destination.address, "team_id": mail.destination.team_id,
             "message_id": mail.message_id, "raw": mail.raw, "peer": mail.peer[:64],
             "received_at": mail.now, "status": "received"} for mail in mails]


def _conflicting(mails: Sequence[NewMail], inserted: dict[str, int]
                 ) -> Iterator[tuple[NewMail, tuple[str, str]]]:
    """The messages not inserted, each with the key of the stored one it conflicted with
    (only the Message-ID can be taken: a transid is new for every message)."""
    for mail in mails:
        if mail.transid not in inserted:
            if mail.message_id is None:
                raise RuntimeError(f"mail {mail.transid} conflicts with no stored message")
            yield mail, (mail.destination.account_id, mail.message_id)


def _saved(mails: Sequence[NewMail], inserted: dict[str, int],
           known: dict[str, tuple[int, str, str] | None]) -> list[tuple[int | None, str]]:
    """:func:`save`'s answer, given the rows inserted and the stored ones the others met."""
    saved: list[tuple[int | None, str]] = []
    for mail in mails:
        if mail.transid in inserted:
            saved.append((inserted[mail.transid], mail.transid))
            continue
        found = known[mail.transid]
        if found is None:
            raise RuntimeError(f"mail {mail.transid} conflicts with no stored message")
        known_id, known_transid, status = found
        saved.append(((known_id if status == "received" else None), known_transid))
    return saved


@dataclass(frozen=True)
class Taken:
    """A stored message a run took: locked until its commit, and still ``received`` then.
    Plain values, not ORM objects: building those was a tenth of a run's CPU
    (bench/README.md, session 14); the run writes its state with :func:`finish`."""

    id: int
    transid: str
    account_id: str
    recipient: str
    team_id: int | None
    message_id: str | None
    raw: bytes
    received_at: datetime


_TAKEN = (MailMessage.id, MailMessage.transid, MailMessage.account_id, MailMessage.recipient,
          MailMessage.team_id, MailMessage.message_id, MailMessage.raw, MailMessage.received_at)


def take(session: Session, mail_ids: Sequence[int]) -> list[Taken]:
    """The messages no worker has processed yet, locked until commit (in id order, so two
    workers taking overlapping sets never wait on each other in a circle).

    SQLite has no row locks: there the run first becomes the database's one writer (an
    ``UPDATE`` that changes no value; one that matches no row takes the lock all the same),
    which no other run's write gets past until it commits.
    So on both, a run that took a message is the only one acting on it, and it matches its
    requests after this write (shared/transactions/service.py ``process_held``)."""
    postgres = dialect.is_postgres(session)
    named = dialect.one_of(MailMessage.id, mail_ids, postgres=postgres)
    received = MailMessage.status == "received"
    if not postgres:
        session.execute(update(MailMessage).where(named, received)
                        .values(status=MailMessage.status))
    return [Taken(**row._mapping) for row in session.execute(
        select(*_TAKEN).where(received, named).order_by(MailMessage.id).with_for_update())]


def take_along(session: Session, mail_ids: Sequence[int], limit: int) -> list[Taken]:
    """Up to ``limit`` other messages no worker has processed, oldest first, locked until
    commit; those another worker holds are skipped, not waited for."""
    return [Taken(**row._mapping) for row in session.execute(
        select(*_TAKEN).where(MailMessage.status == "received", dialect.none_of(
            MailMessage.id, mail_ids, postgres=dialect.is_postgres(session)))
        .order_by(MailMessage.received_at, MailMessage.id).limit(limit)
        .with_for_update(skip_locked=True))]


def finish(session: Session, mail: Taken, status: str, request_id: int | None = None) -> None:
    """The message's end, written at once (a later query of the run sees it)."""
    session.execute(update(MailMessage).where(MailMessage.id == mail.id)
                    .values(status=status, request_id=request_id))


def finish_processed(session: Session, done: Sequence[tuple[Taken, int | None]]) -> None:
    """Many messages ``processed`` (each with the request it made or added a note to) in one
    statement, written at once (a later query of the run sees them)."""
    if done:
        dialect.update_rows(session, MailMessage, [
            {"id": mail.id, "status": "processed", "request_id": request_id}
            for mail, request_id in done])


def add_note(session: Session, *, request_id: int, text: str, internal: bool, markdown: bool,
             time_spent: int | None, transid: str, now: datetime) -> None:
    session.add(Note(request_id=request_id, text=text, text_hash=note_hash(text),
                     internal=internal, markdown=markdown, time_spent=time_spent,
                     transid=transid, created_at=now))
    session.execute(update(Request).where(Request.id == request_id).values(updated_at=now))


def describe_notes(session: Session, transid: str, *, markdown: bool,
                   time_spent: int | None) -> None:
    """Mark the notes the mail ``transid`` added (through the events' processing) as written
    with Text Formatting, and with the time spent."""
    session.execute(update(Note).where(Note.transid == transid)
                    .values(markdown=markdown, time_spent=time_spent))


def set_custom_fields(session: Session, request_id: int, values: dict[str, str]) -> None:
    """The custom fields of a request the mail created (kept verbatim beside its references)."""
    request = session.get(Request, request_id)
    if request is not None:
        request.references = {**request.references, "custom_fields": values}


def set_outcome(session: Session, transid: str, outcome: dict[str, Any]) -> None:
    session.execute(update(Transaction).where(Transaction.transid == transid)
                    .values(outcome=outcome))


def record_completed(session: Session, row: Taken, parameters: dict[str, Any],
                     outcome: dict[str, Any], now: datetime) -> None:
    """The transaction of a mail that became a note (a new request's is process_held's)."""
    session.add(Transaction(
        transid=row.transid, channel="mail", account_id=row.account_id,
        parameters=parameters, received_at=row.received_at, status="completed",
        outcome=outcome, created_at=now, completed_at=now,
    ))


# pg_advisory_xact_lock id for allocating person ids (any constant no other lock uses).
_PERSON_ID_LOCK = 0x6D61696C  # "mail"


def create_person(session: Session, *, account_id: str, email: str, name: str) -> int:
    """A person of the account for a sender no one has the address of (Email Policy); its id
    is above every person's. Returns the id (an existing person's, when a concurrent mail from
    the same sender created it first)."""
    dialect.lock(session, [_PERSON_ID_LOCK])
    existing = session.scalars(select(Person.id).where(
        Person.account_id == account_id, func.lower(Person.primary_email) == email)).first()
    if existing is not None:
        return existing
    person_id = (session.scalar(select(func.max(Person.id))) or 0) + 1
    session.add(Person(id=person_id, account_id=account_id, name=name or email,
                       primary_email=email, other_emails=[], roles={}, team_ids=[]))
    session.flush()
    return person_id


def _write_file(directory: Path, digest: str, content: bytes) -> None:
    """The content at its SHA-256's path, written whole or not at all (a temporary file renamed
    into place); a file already there is the same content, and stays."""
    path = attachment_path(directory, digest)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        # The rename itself is durable only once its directory is: before the row commits.
        directory_handle = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory_handle)
        finally:
            os.close(directory_handle)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_attachments(session: Session, row: Taken, request_id: int,
                     attachments: Sequence[Attachment], directory: Path | None) -> None:
    """The attachments the mail carried (at most 20), for the request it created or added a
    note to. With a directory, each file is on disk before the rows commit: a row never names
    a file that is not there (a crash between leaves an unnamed file, never a missing one)."""
    for position, item in enumerate(attachments):
        digest = hashlib.sha256(item.content).hexdigest()
        if directory is not None:
            _write_file(directory, digest, item.content)
        session.add(MailAttachment(
            mail_id=row.id, position=position, account_id=row.account_id,
            request_id=request_id, filename=item.filename, content_type=item.content_type,
            size=item.size, inline=item.inline, sha256=digest,
            content=None if directory is not None else item.content))
