"""What ``GET /v1/transactions/<transid>`` and ``GET /v1/deliveries`` show of deliveries."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import NotificationAttempt, NotificationDelivery
from shared.notify.schemas import AttemptView, DeliveryItem, DeliveryList, DeliveryView

ND = NotificationDelivery


def delivery_view(session: Session, delivery: NotificationDelivery) -> DeliveryView:
    """The delivery with every attempt, oldest first."""
    attempts = session.scalars(
        select(NotificationAttempt).where(NotificationAttempt.delivery_id == delivery.id)
        .order_by(NotificationAttempt.id)
    )
    history = [AttemptView(
        number=a.number, attempted_at=a.attempted_at, status_code=a.status_code, error=a.error,
        response=a.response, duration_ms=a.duration_ms, verdict=a.verdict, address=a.address,
    ) for a in attempts]
    return DeliveryView.model_validate({**_fields(delivery), "history": history})


def _fields(delivery: NotificationDelivery) -> dict[str, Any]:
    return {
        "status": delivery.status, "attempts": delivery.attempts, "url": delivery.url,
        "message_id": delivery.message_id, "next_attempt_at": delivery.next_attempt_at,
        "last_error": delivery.last_error, "completed_at": delivery.completed_at,
    }


def list_deliveries(
    session: Session, account_id: str, *, status: str | None, limit: int, before: int | None
) -> DeliveryList:
    """The account's deliveries, newest first, ``limit`` a page; ``before``: the page's cursor."""
    query = select(ND).where(ND.account_id == account_id)
    if status is not None:
        query = query.where(ND.status == status)
    if before is not None:
        query = query.where(ND.id < before)
    rows = list(session.scalars(query.order_by(ND.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryList(
        deliveries=[DeliveryItem.model_validate({**_fields(row), "transid": row.transid})
                    for row in rows],
        next=str(rows[-1].id) if more and rows else None,
    )
