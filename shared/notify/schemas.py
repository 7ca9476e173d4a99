"""What the api shows of a notification delivery and its attempts."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class AttemptView(BaseModel):
    number: int = Field(description="1 for the first attempt; counts on across redeliveries.")
    attempted_at: datetime
    status_code: int | None = Field(default=None, description="The receiver's HTTP status.")
    error: str | None = Field(
        default=None, description="Why no response came: ConnectError, ReadTimeout, "
        "DeadlineExceeded, ForbiddenAddress, TLSError, LeaseExpired (the worker died), ...",
    )
    response: str | None = Field(default=None, description="The response's first 1 KB.")
    duration_ms: int
    verdict: str | None = Field(
        default=None, description="What it meant: delivered, retry, failed or disable."
    )
    address: str | None = Field(default=None, description="The IP address connected to.")


class DeliveryView(BaseModel):
    status: str = Field(
        description="pending, sending, delivered, failed (permanent error), disabled (the URL "
        "answered 410 Gone) or dead (every attempt of the schedule failed)."
    )
    attempts: int
    url: str
    message_id: str | None = Field(
        default=None, description="The webhook-id header: the same on every attempt."
    )
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    completed_at: datetime | None = None
    history: list[AttemptView] | None = Field(
        default=None, description="Every attempt, oldest first."
    )


class DeliveryItem(DeliveryView):
    transid: str


class DeliveryList(BaseModel):
    """``GET /v1/deliveries``: newest first."""

    deliveries: list[DeliveryItem]
    next: str | None = Field(
        default=None, description="Pass as ?before= for the next page; absent on the last page."
    )


class Redelivery(BaseModel):
    """``POST /v1/transactions/<transid>/redeliver``"""

    transid: str
    status: str
    message_id: str
