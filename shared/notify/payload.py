"""The body POSTed to a notify URL (DESIGN 5), the same for every channel.

``code``/``description`` say how the transaction ended, in the Webex code style: ``1000
Completed``, ``1001 Expired`` (its expiry passed before a worker took it), or, when it failed,
the Webex error code that fits (``7004`` for a value the worker could not use, ``7005`` otherwise).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.intake.codes import Code

ENDINGS: dict[str, tuple[str, str]] = {
    "completed": ("1000", "Completed"),
    "expired": ("1001", "Expired"),
}


class NotificationOutcome(BaseModel):
    action: str | None = None
    request_id: int | None = None


class Notification(BaseModel):
    transid: str
    correlationid: str | None
    evtid: str | None
    status: str
    code: str
    description: str
    outcome: NotificationOutcome
    timestamp: datetime


def build(
    *, transid: str, correlationid: str | None, evtid: str | None, status: str,
    outcome: dict[str, Any] | None, failure: Code | None, timestamp: datetime,
) -> dict[str, Any]:
    if failure is not None:
        code, description = failure.value, failure.description
    else:
        code, description = ENDINGS[status]
    outcome = outcome or {}
    return Notification(
        transid=transid, correlationid=correlationid, evtid=evtid, status=status, code=code,
        description=description,
        outcome=NotificationOutcome(
            action=outcome.get("action"), request_id=outcome.get("request_id")
        ),
        timestamp=timestamp,
    ).model_dump(mode="json")
