"""Reads of the Mail API: which account (and team) an address is, what a reply is to, and the
attachments kept of a request's mail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from shared.db import dialect
from shared.db.lookup import LookupUnavailable
from shared.db.models import Account, MailAttachment, MailMessage, Request, Team
from shared.mail.rules import DirectoryRecipient, Recipient, UnknownRecipient
from shared.mail.schemas import EmailPolicy


@dataclass(frozen=True)
class Destination:
    account_id: str
    team_id: int | None
    address: str


def destination(session: Session, recipient: Recipient) -> Destination:
    """The account (and team) ``recipient`` reaches; raises UnknownRecipient or
    DirectoryRecipient."""
    address = f"{recipient.team_local_part + '.' if recipient.team_local_part else ''}" \
              f"{recipient.account_id}@{recipient.domain}"
    account = session.get(Account, recipient.account_id)
    if account is None or (account.mail_domain or "").lower() != recipient.domain:
        raise UnknownRecipient(f"no account has the address {address}")
    if session.scalars(select(Account.id).where(
            Account.directory_account_id == account.id).limit(1)).first() is not None:
        raise DirectoryRecipient(f"{address} is a directory account, which receives no mail: "
                                 "write to one of its support domain accounts")
    team_id = None
    if recipient.team_local_part is not None:
        team_id = session.scalars(select(Team.id).where(
            Team.account_id == account.id,
            Team.mail_local_part == recipient.team_local_part)).first()
        if team_id is None:
            raise UnknownRecipient(f"no team of {account.id} has the address {address}")
    return Destination(account.id, team_id, address)


def email_policy(session: Session, account_id: str) -> EmailPolicy:
    """The account's Email Policy; raises pydantic's ValidationError when it is not one."""
    stored = session.scalars(select(Account.mail_policy).where(Account.id == account_id)).first()
    return EmailPolicy.model_validate(stored or {})


def stored(executor: dialect.Executor, account_id: str, message_id: str
           ) -> tuple[int, str, str] | None:
    """The id, transid and status of the account's stored message with this Message-ID."""
    row = executor.execute(stored_query(account_id, message_id)).first()
    return (row.id, row.transid, row.status) if row is not None else None


def stored_query(account_id: str, message_id: str) -> Select[int, str, str]:
    """:func:`stored`'s (also run on an event loop: shared/mail/store.save_async)."""
    return select(MailMessage.id, MailMessage.transid, MailMessage.status).where(
        MailMessage.account_id == account_id, MailMessage.message_id == message_id)


def pending(session: Session, before: datetime, limit: int) -> list[int]:
    """Mail received before ``before`` that no worker has processed yet, oldest first."""
    return list(session.scalars(
        select(MailMessage.id).where(MailMessage.status == "received",
                                     MailMessage.received_at < before)
        .order_by(MailMessage.received_at).limit(limit)))


@dataclass(frozen=True)
class RequestFacts:
    id: int
    updated_at: datetime
    people: tuple[int | None, ...]  # created_by, requested_by, requested_for


def threaded_request(session: Session, account_id: str, message_ids: Sequence[str]) -> int | None:
    """The request that the newest of these messages created or added a note to."""
    if not message_ids:
        return None
    return session.scalars(
        select(MailMessage.request_id).where(
            MailMessage.account_id == account_id, MailMessage.message_id.in_(message_ids),
            MailMessage.request_id.is_not(None))
        .order_by(MailMessage.received_at.desc()).limit(1)).first()


def requests_by_source(session: Session, account_id: str, source: str, source_id: str,
                       limit: int = 5) -> list[int]:
    """The account's requests with this source and sourceID, newest first."""
    return list(session.scalars(
        select(Request.id).where(Request.account_id == account_id, Request.source == source,
                                 Request.source_id == source_id)
        .order_by(Request.created_at.desc(), Request.id.desc()).limit(limit)))


def requests_of(session: Session, account_id: str, ids: Sequence[int]) -> list[RequestFacts]:
    """The requests of the account with these ids, in the order asked."""
    rows = {row.id: row for row in session.execute(
        select(Request.id, Request.updated_at, Request.created_by_id, Request.requested_by_id,
               Request.requested_for_id)
        .where(Request.account_id == account_id, Request.id.in_(ids)))}
    return [RequestFacts(rows[id_].id, rows[id_].updated_at,
                         (rows[id_].created_by_id, rows[id_].requested_by_id,
                          rows[id_].requested_for_id)) for id_ in ids if id_ in rows]


def attachment_path(directory: Path, digest: str) -> Path:
    return directory / digest[:2] / digest


@dataclass(frozen=True)
class AttachmentRow:
    transid: str
    position: int
    filename: str
    content_type: str
    size: int
    inline: bool


_LISTED = (MailMessage.transid, MailAttachment.position, MailAttachment.filename,
           MailAttachment.content_type, MailAttachment.size, MailAttachment.inline)


def attachments_of_request(session: Session, account_id: str, request_id: int
                           ) -> list[AttachmentRow]:
    """The attachments of the mails that created or added a note to the request, in order."""
    return [AttachmentRow(*row) for row in session.execute(
        select(*_LISTED).join(MailMessage, MailMessage.id == MailAttachment.mail_id)
        .where(MailAttachment.account_id == account_id, MailAttachment.request_id == request_id)
        .order_by(MailMessage.received_at, MailMessage.id, MailAttachment.position))]


def attachment(session: Session, account_id: str, transid: str, position: int,
               directory: Path | None) -> tuple[AttachmentRow, bytes] | None:
    """An attachment of the account's mail ``transid`` and its content; None when there is no
    such attachment, or its file is gone; LookupUnavailable when its file cannot be read."""
    found = session.execute(
        select(*_LISTED, MailAttachment.sha256, MailAttachment.content)
        .join(MailMessage, MailMessage.id == MailAttachment.mail_id)
        .where(MailMessage.transid == transid, MailAttachment.account_id == account_id,
               MailAttachment.position == position)).first()
    if found is None:
        return None
    digest, content = found.sha256, found.content
    if content is None:
        if directory is None:
            return None
        try:
            content = attachment_path(directory, digest).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # unreadable (permissions, the disk): the api answers 503
            raise LookupUnavailable(f"attachment file unreadable: {exc}") from exc
    return AttachmentRow(found.transid, found.position, found.filename, found.content_type,
                         found.size, found.inline), content
