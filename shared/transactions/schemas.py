"""What crosses the broker for events, and what the status endpoint answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.notify.schemas import DeliveryView

Status = Literal["queued", "processing", "completed", "expired", "failed"]


class MailFacts(BaseModel):
    """What the Mail API's variant of event matching needs of a mail beyond its fields
    (shared/requests/matching.py)."""

    model_config = ConfigDict(frozen=True)

    body: str = Field(description="The text below the parameters: the note of the match key.")
    attachments: bool = False


class QueuedEvent(BaseModel):
    transid: str
    evtid: str | None = None
    correlationid: str | None = None
    parameters: dict[str, str | None] = Field(default_factory=dict)
    # The event's default notify URL (its definition's or its key's), set by the intake only
    # when the body gives none: the batch's notifyurl, the body's, wins.
    notifyurl: str | None = None
    # A mail's: it is matched by the Mail API's rule, not the Events API's.
    mail: MailFacts | None = None


class EventBatch(BaseModel):
    """The events of one HTTP request, all JSON values: each argument of an ``events.process``
    message (one or more a message, shared/messaging/queueing.py)."""

    channel: Literal["webex", "4me", "mail"]
    account_id: str
    key_id: int | None = None
    received_at: datetime
    expiry: datetime | None = None
    notifyurl: str | None = None
    # The person a mail came from (its From address, resolved); else the key's person acts.
    sender_id: int | None = None
    events: list[QueuedEvent] = Field(min_length=1)


class Outcome(BaseModel):
    action: Literal["created", "updated", "unchanged"]
    request_id: int | None = None
    match: Literal["ci", "subject"] | None = Field(
        default=None, description="The event matching key an existing request was found on."
    )
    reason: str | None = Field(default=None, description="Why a request was matched, if it was.")
    unresolved: dict[str, str] | None = Field(
        default=None, description="References given that name no record (left empty)."
    )
    ignored: dict[str, str] | None = Field(
        default=None, description="Mail parameters not applied, and why."
    )


class TransactionView(BaseModel):
    """``GET /v1/transactions/<transid>``"""

    transid: str
    status: Status
    channel: str | None = None
    evtid: str | None = None
    correlationid: str | None = None
    parameters: dict[str, str | None] | None = Field(
        default=None, description="The event's parameters as received, custom ones included."
    )
    received_at: datetime | None = None
    completed_at: datetime | None = None
    outcome: Outcome | None = None
    error: str | None = None
    notification: DeliveryView | None = None

    @classmethod
    def queued(cls, transid: str) -> TransactionView:
        return cls(transid=transid, status="queued")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
