"""The transaction's state, as ``GET /v1/transactions/{transid}`` (and ``Prefer: wait``)
shows it: a read model built from its row and its notification's."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import NotificationDelivery, Transaction
from shared.notify.views import delivery_view
from shared.transactions.schemas import Outcome, TransactionView


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

