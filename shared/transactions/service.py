"""Processing a batch of queued events, once, whatever the number of deliveries of its message.

The batch runs in the caller's database transaction. Its transaction rows are inserted with
``ON CONFLICT DO NOTHING``: only the rows this run inserted are processed, so a redelivered or
concurrently delivered message finds its events taken and changes nothing (DESIGN 4.5). On
PostgreSQL the second inserter waits on the first one's row locks, then skips.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db.models import EventDefinition, NotificationDelivery, Transaction
from shared.intake.codes import Code
from shared.notify import payload
from shared.requests.fields import FieldErrors, check_fields, event_fields
from shared.requests.service import create_request
from shared.transactions.schemas import (
    DeliveryView,
    EventBatch,
    Outcome,
    QueuedEvent,
    TransactionView,
)


def _claim(session: Session, batch: EventBatch, now: datetime) -> set[str]:
    """Insert the batch's transaction rows; returns the transids this run owns."""
    rows = [
        {
            "transid": event.transid, "channel": batch.channel, "account_id": batch.account_id,
            "key_id": batch.key_id, "evtid": event.evtid, "correlationid": event.correlationid,
            "parameters": event.parameters, "notifyurl": batch.notifyurl, "expiry": batch.expiry,
            "received_at": batch.received_at, "status": "processing", "created_at": now,
        }
        for event in batch.events
    ]
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(Transaction).values(rows)
        .on_conflict_do_nothing(index_elements=["transid"])
        .returning(Transaction.transid)
    )
    return set(session.scalars(statement))


def _definitions(session: Session, account_id: str, evtids: set[str]) -> dict[str, EventDefinition]:
    found = session.scalars(select(EventDefinition).where(
        EventDefinition.account_id == account_id, EventDefinition.evtid.in_(evtids)
    ))
    return {definition.evtid: definition for definition in found}


class EventFailed(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


def _act(
    session: Session, batch: EventBatch, event: QueuedEvent,
    definitions: dict[str, EventDefinition], now: datetime,
) -> Outcome:
    definition = definitions.get(event.evtid or "")
    if definition is None:
        raise EventFailed(Code.INVALID_VALUES, f"event definition {event.evtid!r} is gone")
    try:
        fields = check_fields(
            event_fields(event.parameters, definition.defaults, definition.mapping)
        )
    except FieldErrors as exc:
        raise EventFailed(Code.INVALID_VALUES, str(exc)) from exc
    request = create_request(
        session, batch.account_id, fields, subject_fallback=definition.evtid,
        transid=event.transid, now=now,
    )
    return Outcome(action="created", request_id=request.id)


def process_batch(session: Session, batch: EventBatch, now: datetime) -> list[int]:
    """Act on every event of the batch not yet processed. Returns delivery ids to queue."""
    owned = _claim(session, batch, now)
    if not owned:
        return []
    events = [event for event in batch.events if event.transid in owned]
    expired = batch.expiry is not None and now > batch.expiry
    definitions = {} if expired else _definitions(
        session, batch.account_id, {event.evtid for event in events if event.evtid}
    )
    rows = {row.transid: row for row in session.scalars(
        select(Transaction).where(Transaction.transid.in_(owned))
    )}
    deliveries: list[NotificationDelivery] = []
    for event in events:
        row = rows[event.transid]
        failure: Code | None = None
        if expired:
            row.status = "expired"
        else:
            try:
                with session.begin_nested():
                    row.outcome = _act(session, batch, event, definitions, now).model_dump(
                        mode="json", exclude_none=True
                    )
                row.status = "completed"
            except EventFailed as exc:
                row.status, row.error, failure = "failed", str(exc), exc.code
        row.completed_at = now
        if batch.notifyurl:
            deliveries.append(_delivery(row, batch.notifyurl, failure, now))
    session.add_all(deliveries)
    session.flush()
    return [delivery.id for delivery in deliveries]


def _delivery(
    row: Transaction, url: str, failure: Code | None, now: datetime
) -> NotificationDelivery:
    body = payload.build(
        transid=row.transid, correlationid=row.correlationid, evtid=row.evtid, status=row.status,
        outcome=row.outcome, failure=failure, timestamp=now,
    )
    return NotificationDelivery(
        transid=row.transid, account_id=row.account_id, url=url,
        message_id=f"msg_{uuid.uuid4().hex}", payload=body, status="pending",
        created_at=now, updated_at=now, next_attempt_at=now,
    )


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
        received_at=row.received_at, completed_at=row.completed_at,
        outcome=Outcome.model_validate(row.outcome) if row.outcome else None, error=row.error,
        notification=DeliveryView(status=delivery.status, attempts=delivery.attempts,
                                  url=delivery.url) if delivery else None,
    )

