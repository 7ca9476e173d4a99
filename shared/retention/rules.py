"""What retention removes, as pure functions (the SQL that does it: ``store.py``).

A finished transaction (completed, expired, failed) is removed, with its notification delivery
and that delivery's attempts, once it was received longer ago than the transaction retention,
unless its delivery is still owed (pending, or being sent: never touched) or is dead or
disabled and younger than the delivery retention (an operator may still look at it and replay
it, ``POST /v1/transactions/<transid>/redeliver``, which needs the transaction). Requests and
notes are the service desk's records: retention never removes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

FINISHED = ("completed", "expired", "failed")
# The name of the transaction log in ``retention_marks``.
TRANSACTION_LOG = "transactions"
# A delivery in one of these is still owed to its notify URL.
OWED = ("pending", "sending")
# Kept for the delivery retention, which may be longer than the transactions'.
UNDELIVERED = ("dead", "disabled")

@dataclass(frozen=True)
class Horizon:
    """The instants before which rows may go, for one purge."""

    transactions: datetime
    # Dead and disabled deliveries last updated before this go (never later than transactions).
    undelivered: datetime

    @classmethod
    def at(
        cls, now: datetime, retention: timedelta, undelivered: timedelta | None = None
    ) -> Horizon:
        """``undelivered``: the delivery retention, when set; shorter than the transactions'
        counts as the same, so a dead delivery never goes before its transaction."""
        kept = max(retention, undelivered or retention)
        return cls(transactions=now - retention, undelivered=now - kept)


def removable(horizon: Horizon, delivery_status: str | None, delivery_updated: datetime | None
              ) -> bool:
    """Whether a finished transaction past the horizon may go, given its delivery (if any)."""
    if delivery_status is None:
        return True
    if delivery_status in OWED:
        return False
    if delivery_status in UNDELIVERED:
        return delivery_updated is not None and delivery_updated < horizon.undelivered
    return True


def expired_from_log(issued: datetime | None, removed_before: datetime | None) -> bool:
    """A transid we issued and have no row for: removed by retention, rather than queued?

    ``removed_before`` is the latest horizon a purge has applied (``store.mark``). Only an id
    issued before it can have been removed; one issued after has not reached a worker yet.
    """
    return issued is not None and removed_before is not None and issued < removed_before
