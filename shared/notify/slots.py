"""At most N deliveries in flight to one receiver, across every worker: a database semaphore.

Each receiver (``host:port``) has N slot rows; a worker takes free ones with a compare-and-set
(``holder IS NULL OR lease_until < now``) in the short transaction that claims a batch of
deliveries, one slot for each POST it will have in flight to that receiver at once (its lanes), and
frees them in the one that records the receiver's last attempt of the batch. A worker that dies
frees its slots when the lease runs out. In the database rather than Redis because the database is
there with every broker (Redis, RabbitMQ, the embedded SQLite transport), and the claim transaction
is already open.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from shared.db import dialect
from shared.db.models import NotifyHostSlot


def acquire(
    session: Session, host: str, holder: str, *, now: datetime, until: datetime, limit: int,
    wanted: int = 1,
) -> int:
    """Take up to ``wanted`` free slots of ``host`` for ``holder`` until ``until``; how many.

    One statement: the free slots are picked and taken together. On PostgreSQL, slots another
    claimer has locked meanwhile are skipped, not waited for, and the outer conditions are
    checked again on any row that changed, so two claimers never hold one slot. A host's slot
    rows are made the first time it has fewer than ``limit`` of them (a second statement).
    """
    taken = _take(session, host, holder, now=now, until=until, limit=limit, wanted=wanted)
    if taken < wanted:
        made = session.execute(
            dialect.insert(session, NotifyHostSlot)
            .values([{"host": host, "slot": slot} for slot in range(limit)])
            .on_conflict_do_nothing(index_elements=["host", "slot"])
            .returning(NotifyHostSlot.slot)
        ).all()
        if made:
            taken += _take(session, host, holder, now=now, until=until, limit=limit,
                           wanted=wanted - taken)
    return taken


def _take(
    session: Session, host: str, holder: str, *, now: datetime, until: datetime, limit: int,
    wanted: int,
) -> int:
    free = and_(NotifyHostSlot.host == host, NotifyHostSlot.slot < limit,
                or_(NotifyHostSlot.holder.is_(None), NotifyHostSlot.lease_until < now))
    # Random order: concurrent claimers rarely go for the same rows.
    picked = (select(NotifyHostSlot.slot).where(free).order_by(func.random()).limit(wanted)
              .with_for_update(skip_locked=True))
    taken = session.execute(
        update(NotifyHostSlot)
        .where(free, NotifyHostSlot.slot.in_(picked.scalar_subquery()))
        .values(holder=holder, lease_until=until)
        .returning(NotifyHostSlot.slot)
        .execution_options(synchronize_session=False)
    ).all()
    return len(taken)


def free_among(session: Session, hosts: Collection[str], *, now: datetime, limit: int) -> set[str]:
    """Which of ``hosts`` have a free slot: a read, so that waiting for one costs no claim."""
    return set(session.scalars(select(NotifyHostSlot.host).distinct().where(
        NotifyHostSlot.host.in_(hosts), NotifyHostSlot.slot < limit,
        or_(NotifyHostSlot.holder.is_(None), NotifyHostSlot.lease_until < now))))


def renew(session: Session, host: str, holder: str, *, until: datetime) -> int:
    """Extend ``holder``'s slots of ``host`` to ``until``; how many it holds."""
    renewed = session.execute(
        update(NotifyHostSlot)
        .where(NotifyHostSlot.host == host, NotifyHostSlot.holder == holder)
        .values(lease_until=until)
        .returning(NotifyHostSlot.slot)
        .execution_options(synchronize_session=False)
    ).all()
    return len(renewed)


def release(session: Session, host: str, holder: str) -> None:
    session.execute(
        update(NotifyHostSlot)
        .where(NotifyHostSlot.host == host, NotifyHostSlot.holder == holder)
        .values(holder=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
