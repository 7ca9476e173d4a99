"""A purge: every account's finished transactions past the horizon, batch after batch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.db.engine import session_scope
from shared.retention import store
from shared.retention.rules import Horizon
from shared.settings import Settings

# Rows of the transactions table a batch looks at: a batch short enough that a replay waiting on
# a delivery's row lock, or SQLite's other writers, hardly notice (bench/README.md, "The purge").
BATCH = 1000


@dataclass
class Purged:
    transactions: int = 0
    deliveries: int = 0
    attempts: int = 0
    batches: int = 0
    seconds: float = 0.0
    # The longest batch: how long row locks were held at most (a replay waits no longer).
    longest_batch_seconds: float = 0.0
    # False when the time budget ran out first: the next purge carries on.
    complete: bool = True
    horizon: datetime | None = None

    def counts(self) -> dict[str, int]:
        return {"transactions": self.transactions, "notification_deliveries": self.deliveries,
                "notification_attempts": self.attempts}


def horizon_for(settings: Settings, now: datetime, older_than: timedelta | None = None
                ) -> Horizon:
    """The configured horizon, or ``older_than`` for transactions (an on-demand purge); dead
    and disabled deliveries keep their own retention when it is longer."""
    return Horizon.at(now, older_than or settings.transaction_retention,
                      settings.dead_delivery_retention)


def purge(
    horizon: Horizon, *, database_url: str | None = None, batch: int = BATCH,
    budget_seconds: float | None = None,
) -> Purged:
    """Remove what the horizon lets go; with a budget, stop after it (``complete`` False)."""
    started = time.monotonic()
    deadline = None if budget_seconds is None else started + budget_seconds
    result = Purged(horizon=horizon.transactions)
    with session_scope(database_url) as session:
        accounts = store.account_ids(session)
    for account_id in accounts:
        if not _purge_account(result, account_id, horizon, database_url=database_url,
                              batch=batch, deadline=deadline):
            result.complete = False
            break
    result.seconds = time.monotonic() - started
    return result


def _purge_account(
    result: Purged, account_id: str, horizon: Horizon, *, database_url: str | None,
    batch: int, deadline: float | None,
) -> bool:
    """Batches until the account has nothing left (True) or the deadline passed (False)."""
    cursor = None
    while True:
        began = time.monotonic()
        with session_scope(database_url) as session:
            step = store.purge_batch(session, account_id, horizon, after=cursor, limit=batch,
                                     now=datetime.now(UTC))
        result.longest_batch_seconds = max(result.longest_batch_seconds,
                                           time.monotonic() - began)
        result.transactions += step.transactions
        result.deliveries += step.deliveries
        result.attempts += step.attempts
        result.batches += 1
        cursor = step.cursor
        if cursor is None:
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
