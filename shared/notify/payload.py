"""The body POSTed to a notify URL (DESIGN 5), the same for every channel.

``code``/``description`` say how the transaction ended, in the Webex code style: ``1000
Completed``, ``1001 Expired`` (its expiry passed before a worker took it), or, when it failed,
the Webex error code that fits (``7004`` for a value the worker could not use, ``7005`` otherwise).
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from shared.codes import Code
from shared.notify.rules import host_key

ENDINGS: dict[str, tuple[str, str]] = {
    "completed": ("1000", "Completed"),
    "expired": ("1001", "Expired"),
}


class NotificationOutcome(BaseModel):
    action: str | None = Field(
        default=None, description="What was done: created, updated or unchanged (a request)."
    )
    request_id: int | None = Field(default=None, description="The request acted on.")


class Notification(BaseModel):
    """The body POSTed to a notify URL when a transaction ends (JSON, signed: docs/api.md)."""

    transid: str = Field(description="The transaction id the event was accepted under.")
    correlationid: str | None = Field(description="The caller's correlationid, if it gave one.")
    evtid: str | None = Field(description="The event definition the event ran.")
    status: str = Field(description="How the transaction ended: completed, expired or failed.")
    code: str = Field(description="Webex-style code: 1000 Completed, 1001 Expired, 7004, 7005.")
    description: str = Field(description="The code's text.")
    outcome: NotificationOutcome
    timestamp: datetime = Field(description="When the transaction ended (UTC, ISO 8601).")


SCHEMA_ID = "https://eventdesk.invalid/schemas/notification.schema.json"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Notification`, as in ``docs/notification.schema.json``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **Notification.model_json_schema(mode="serialization"),
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


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


def new_delivery(
    *, transid: str, account_id: str, correlationid: str | None, evtid: str | None, status: str,
    outcome: dict[str, Any] | None, url: str, failure: Code | None, now: datetime,
) -> dict[str, Any]:
    """The ``notification_deliveries`` row a finished transaction owes its notify URL."""
    body = build(
        transid=transid, correlationid=correlationid, evtid=evtid, status=status,
        outcome=outcome, failure=failure, timestamp=now,
    )
    # Every column a plain INSERT would otherwise leave to the model's Python-side defaults.
    return {
        "transid": transid, "account_id": account_id, "url": url,
        "message_id": f"msg_{uuid.uuid4().hex}", "payload": body, "status": "pending",
        "attempts": 0, "schedule_offset": 0, "created_at": now, "updated_at": now,
        "next_attempt_at": now, "host": host_key(url),
    }


if __name__ == "__main__":  # python -m shared.notify.payload > docs/notification.schema.json
    sys.stdout.write(json_schema_text())
