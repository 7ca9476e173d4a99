"""The SQL that removes what retention lets go (which rows: ``rules.py``).

One batch is one short database transaction, so nothing is held long:

1. the mark (``retention_marks``) is raised to the horizon. It is the batch's first statement
   because on SQLite a transaction that read first may not write after another connection has,
   and a write takes SQLite's write lock at once; on PostgreSQL it also makes two purges that
   run at once take turns batch by batch;
2. the next ``limit`` finished transactions of one account received before the horizon, in
   ``(received_at, transid)`` order after a cursor: a range of the ``(account_id, received_at)``
   index the intake already keeps, so retention adds no index for the hot path to maintain;
3. their deliveries, locked on PostgreSQL (``FOR UPDATE``: a replay waits for this batch
   rather than starting a delivery that is being removed), kept or not by ``rules.removable``;
4. the attempts, deliveries and transactions that go, by primary key.

Nothing locks a table: PostgreSQL takes ROW EXCLUSIVE (as any INSERT does) and row locks on the
removed rows and their deliveries, none of which the hot path writes once finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, delete, select, tuple_
from sqlalchemy.orm import Session

from shared.db import dialect
from shared.db.models import (
    Account,
    NotificationAttempt,
    NotificationDelivery,
    RetentionMark,
    Transaction,
)
from shared.retention.rules import FINISHED, TRANSACTION_LOG, Horizon, removable

ND = NotificationDelivery


@dataclass(frozen=True)
class Batch:
    transactions: int
    deliveries: int
    attempts: int
    # The last transaction looked at, kept or not: the next batch starts after it. None when
    # this batch found fewer than it asked for (nothing left in this account).
    cursor: tuple[datetime, str] | None


def account_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Account.id).order_by(Account.id)))


def purge_batch(
    session: Session, account_id: str, horizon: Horizon, *,
    after: tuple[datetime, str] | None, limit: int, now: datetime,
) -> Batch:
    _raise_mark(session, horizon.transactions, now)
    query = (
        select(Transaction.received_at, Transaction.transid)
        .where(Transaction.account_id == account_id,
               Transaction.received_at < horizon.transactions,
               Transaction.status.in_(FINISHED))
        .order_by(Transaction.received_at, Transaction.transid)
        .limit(limit)
    )
    if after is not None:
        query = query.where(tuple_(Transaction.received_at, Transaction.transid) > after)
    found = session.execute(query).all()
    if not found:
        return Batch(0, 0, 0, None)
    transids = [transid for _, transid in found]
    deliveries = select(ND.transid, ND.id, ND.status, ND.updated_at).where(
        ND.transid.in_(transids))
    if dialect.is_postgres(session):
        deliveries = deliveries.with_for_update()
    owed = {transid: (delivery_id, status, updated)
            for transid, delivery_id, status, updated in session.execute(deliveries)}
    gone = [transid for transid in transids
            if transid not in owed or removable(horizon, owed[transid][1], owed[transid][2])]
    gone_deliveries = [owed[transid][0] for transid in gone if transid in owed]
    attempts = deliveries_removed = 0
    if gone_deliveries:
        attempts = _count(session.execute(delete(NotificationAttempt).where(
            NotificationAttempt.delivery_id.in_(gone_deliveries))))
        deliveries_removed = _count(session.execute(delete(ND).where(ND.id.in_(gone_deliveries))))
    removed = _count(session.execute(delete(Transaction).where(Transaction.transid.in_(gone))))
    last_received, last_transid = found[-1]
    cursor = (last_received, last_transid) if len(found) == limit else None
    return Batch(removed, deliveries_removed, attempts, cursor)


def _raise_mark(session: Session, removed_before: datetime, now: datetime) -> None:
    statement = dialect.insert(session, RetentionMark).values(
        log=TRANSACTION_LOG, removed_before=removed_before, updated_at=now)
    # Only forward: a purge with a longer horizon after a shorter one removes nothing new.
    session.execute(statement.on_conflict_do_update(
        index_elements=[RetentionMark.log],
        set_={"removed_before": case(
            (RetentionMark.removed_before < statement.excluded.removed_before,
             statement.excluded.removed_before),
            else_=RetentionMark.removed_before),
            "updated_at": statement.excluded.updated_at},
    ))


def _count(result: object) -> int:
    return int(result.rowcount)  # type: ignore[attr-defined]
