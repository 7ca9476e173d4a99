"""Writes of the Mail API: the raw message (the durable point of intake), its processing state,
and a reply's note."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.models import MailMessage, Note, Request, Transaction
from shared.mail.queries import Destination, existing_transid
from shared.requests.matching import note_hash


def save(
    session: Session, *, transid: str, destination: Destination, message_id: str | None,
    raw: bytes, peer: str, now: datetime,
) -> tuple[int | None, str]:
    """Store the message; returns its row id and transid. A message already stored for this
    account (same Message-ID: the sender did not see our answer and sent it again) is not
    stored twice: then the id is None and the transid the first copy's."""
    if message_id is not None:
        known = existing_transid(session, destination.account_id, message_id)
        if known is not None:
            return None, known
    row = MailMessage(
        transid=transid, account_id=destination.account_id, recipient=destination.address,
        team_id=destination.team_id, message_id=message_id, raw=raw, peer=peer[:64],
        received_at=now, status="received",
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # The same message arriving twice at the same moment: the first one stored wins.
        assert message_id is not None
        known = existing_transid(session, destination.account_id, message_id)
        if known is None:
            raise
        return None, known
    return row.id, transid


def take(session: Session, mail_id: int) -> MailMessage | None:
    """The message, locked until commit, if no worker has processed it yet."""
    row = session.scalars(
        select(MailMessage).where(MailMessage.id == mail_id).with_for_update()).first()
    return row if row is not None and row.status == "received" else None


def finish(row: MailMessage, status: str, request_id: int | None = None) -> None:
    row.status = status
    row.request_id = request_id


def add_note(session: Session, *, request_id: int, text: str, internal: bool, transid: str,
             now: datetime) -> None:
    session.add(Note(request_id=request_id, text=text, text_hash=note_hash(text),
                     internal=internal, transid=transid, created_at=now))
    session.execute(update(Request).where(Request.id == request_id).values(updated_at=now))


def record_completed(session: Session, row: MailMessage, parameters: dict[str, Any],
                     outcome: dict[str, Any], now: datetime) -> None:
    """The transaction of a mail that became a note (a new request's is process_batches')."""
    session.add(Transaction(
        transid=row.transid, channel="mail", account_id=row.account_id,
        parameters=parameters, received_at=row.received_at, status="completed",
        outcome=outcome, created_at=now, completed_at=now,
    ))
