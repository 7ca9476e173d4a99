"""Transactions after processing: the notification each one owes, and the status view."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import NotificationDelivery, Transaction
from shared.intake.codes import Code
from shared.notify import payload
from shared.notify.views import delivery_view
from shared.transactions.schemas import Outcome, TransactionView


def new_delivery(
    *, transid: str, account_id: str, correlationid: str | None, evtid: str | None, status: str,
    outcome: dict[str, Any] | None, url: str, failure: Code | None, now: datetime,
) -> dict[str, Any]:
    """The ``notification_deliveries`` row a finished transaction owes its notify URL."""
    body = payload.build(
        transid=transid, correlationid=correlationid, evtid=evtid, status=status,
        outcome=outcome, failure=failure, timestamp=now,
    )
    # Every column a plain INSERT would otherwise leave to the model's Python-side defaults.
    return {
        "transid": transid, "account_id": account_id, "url": url,
        "message_id": f"msg_{uuid.uuid4().hex}", "payload": body, "status": "pending",
        "attempts": 0, "schedule_offset": 0, "created_at": now, "updated_at": now,
        "next_attempt_at": now,
    }


def transaction_view(session: Session, account_id: str, transid: str) -> TransactionView | None:
    row = session.get(Transaction, transid)
    if row is None or row.account_id != account_id:
        return None
    delivery = session.scalars(
        select(NotificationDelivery).where(NotificationDelivery.transid == transid)
    ).first()
    return TransactionView(
        transid=row.transid, status=row.status,  # type: ignore[arg-type]
        channel=row.channel, evtid=row.evtid, correlationid=row.correlationid,
        parameters=row.parameters,
        received_at=row.received_at, completed_at=row.completed_at,
        outcome=Outcome.model_validate(row.outcome) if row.outcome else None, error=row.error,
        notification=delivery_view(session, delivery) if delivery else None,
    )

