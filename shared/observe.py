"""What a decision leaves behind once it is committed: a metric and a log line.

The rules call these inside their database transaction; nothing is counted or logged until that
transaction commits, so a batch that is rolled back and retried (database down, a redelivered
message) is counted once, when it really happened. Work queued on a session is run by a
``Session`` ``after_commit`` listener and dropped when the outermost transaction ends otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from shared import metrics
from shared.logs import get_logger

_PENDING = "eventdesk.after_commit"

log = get_logger("eventdesk.events")


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` when ``session``'s current transaction commits; never if it rolls back."""
    session.info.setdefault(_PENDING, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_pending(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the outer one may still fail
        return
    for callback in session.info.pop(_PENDING, ()):
        try:
            callback()
        except Exception:  # an observer's fault must not fail the committed work
            log.exception("observer failed")


@event.listens_for(Session, "after_transaction_end")
def _drop_pending(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost one; a savepoint's end changes nothing
        session.info.pop(_PENDING, None)


def outcome_of(status: str, outcome: dict[str, Any] | None) -> str:
    """The ``outcome`` label of a finished transaction row."""
    if status == "completed":
        return str((outcome or {}).get("action", "created"))
    return status


def processed(
    session: Session, channel: str, received_at: datetime,
    finished: Iterable[tuple[str, str, dict[str, Any] | None]],
) -> None:
    """Events of one batch reached a final state: ``(transid, status, outcome)`` each.

    After commit: ``eventdesk_events_processed_total`` and ``eventdesk_event_latency_seconds``
    for each, and one ``processed`` log line each (transid, outcome, request id).
    """
    rows = [(transid, outcome_of(status, outcome), (outcome or {}).get("request_id"))
            for transid, status, outcome in finished]

    def observe() -> None:
        latency = time.time() - received_at.timestamp()
        for transid, outcome, request_id in rows:
            metrics.record_processed(channel, outcome, latency)
            log.info("processed", channel=channel, transid=transid, outcome=outcome,
                     request_id=request_id, latency_s=round(latency, 3))

    after_commit(session, observe)
