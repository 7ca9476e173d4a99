"""Reads of the Mail API: which account (and team) an address is, and what a reply is to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Account, MailMessage, Request, Team
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


def existing_transid(session: Session, account_id: str, message_id: str) -> str | None:
    return session.scalars(select(MailMessage.transid).where(
        MailMessage.account_id == account_id, MailMessage.message_id == message_id)).first()


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


def requests_of(session: Session, account_id: str, ids: Sequence[int]) -> list[RequestFacts]:
    """The requests of the account with these ids, in the order asked."""
    rows = {row.id: row for row in session.execute(
        select(Request.id, Request.updated_at, Request.created_by_id, Request.requested_by_id,
               Request.requested_for_id)
        .where(Request.account_id == account_id, Request.id.in_(ids)))}
    return [RequestFacts(rows[id_].id, rows[id_].updated_at,
                         (rows[id_].created_by_id, rows[id_].requested_by_id,
                          rows[id_].requested_for_id)) for id_ in ids if id_ in rows]


def mails_of_request(session: Session, account_id: str, request_id: int
                     ) -> list[tuple[str, bytes]]:
    """The transid and raw message of each mail that created or added a note to the request."""
    return [(row.transid, row.raw) for row in session.execute(
        select(MailMessage.transid, MailMessage.raw).where(
            MailMessage.account_id == account_id, MailMessage.request_id == request_id)
        .order_by(MailMessage.received_at, MailMessage.id))]


def raw_of(session: Session, account_id: str, transid: str) -> bytes | None:
    """A processed mail's raw message, for the account only."""
    return session.scalars(select(MailMessage.raw).where(
        MailMessage.account_id == account_id, MailMessage.transid == transid,
        MailMessage.status == "processed")).first()
