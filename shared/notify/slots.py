"""At most N deliveries in flight to one receiver, across every worker: a database semaphore.

Each receiver (``host:port``) has N slot rows; a worker takes a free one with a compare-and-set
(``holder IS NULL OR lease_until < now``) in the short transaction that claims the delivery, and
frees it in the one that records the attempt. A worker that dies frees its slot when the lease
runs out. In the database rather than Redis because the database is there with every broker
(Redis, RabbitMQ, the embedded SQLite transport), and the claim transaction is already open.
"""

from __future__ import annotations

import random
from datetime import datetime

from sqlalchemy import or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db.models import NotifyHostSlot


def acquire(
    session: Session, host: str, holder: str, *, now: datetime, until: datetime, limit: int
) -> int | None:
    """Take a free slot of ``host`` for ``holder`` until ``until``; None if all are taken."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(NotifyHostSlot)
        .values([{"host": host, "slot": slot} for slot in range(limit)])
        .on_conflict_do_nothing(index_elements=["host", "slot"])
    )
    # Random order: concurrent claimers rarely wait on the same row.
    for slot in random.sample(range(limit), limit):
        taken = session.execute(
            update(NotifyHostSlot)
            .where(NotifyHostSlot.host == host, NotifyHostSlot.slot == slot,
                   or_(NotifyHostSlot.holder.is_(None), NotifyHostSlot.lease_until < now))
            .values(holder=holder, lease_until=until)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return slot
    return None


def release(session: Session, host: str, holder: str) -> None:
    session.execute(
        update(NotifyHostSlot)
        .where(NotifyHostSlot.host == host, NotifyHostSlot.holder == holder)
        .values(holder=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
