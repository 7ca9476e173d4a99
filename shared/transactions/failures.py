"""Which errors are retried and which fail one event: the worker's policy, free of Celery.

The worker processes the events of many messages in one database transaction (DESIGN 2). When
that run fails, what happens next depends on the error (DESIGN 6, "Never stuck"):

- an **outage** (the database unreachable or too slow: ``OperationalError``, ``InterfaceError``,
  an invalidated connection, a pool timeout) is no event's fault: it is raised, every message
  goes back to the queue after a pause that grows while it lasts (:class:`Backoff`) and is
  retried, without a budget, as long as the outage lasts;
- any other error is some event's. The run is cut in halves, each half run (and committed) on
  its own, down to single events; an event that still fails alone is recorded ``failed`` with
  the reason, once, and every other event of the run completes. A **data** error (the database
  refused a value: ``DataError``, ``IntegrityError``; ``ValueError``, ``OverflowError`` in the
  rules) fails it with 7004, a **bug** (anything else) with 7005; neither is retried again.

Halving rather than going one by one: one bad event among n costs about 2·log2(n) extra runs
instead of n, and the happy path is the one run it always was, with no per-event work added.
Recording a failure cannot fail on the same bad data (``record_failure`` stores sanitised text);
should it fail all the same, other than by an outage, the event is logged and dropped rather
than its message requeued forever (a mail stays stored, for the sweep). A Mail API job is
halved the same way (:func:`isolating`), once a run without the messages it took along has
failed too (shared/mail/service.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Generic, TypeVar

from sqlalchemy.exc import DataError, IntegrityError, StatementError

from shared.codes import Code
from shared.db.engine import database_unreachable
from shared.logs import get_logger
from shared.transactions.schemas import EventBatch

log = get_logger(__name__)
MAX_REASON = 1000

T = TypeVar("T")
# Processes the batches in one database transaction; returns the delivery ids to queue.
Run = Callable[[Sequence[EventBatch]], list[int]]
# Records the one event of the batch as failed by the error; returns the delivery ids to queue.
Record = Callable[[EventBatch, BaseException], list[int]]


class Fault(StrEnum):
    OUTAGE = "outage"
    DATA = "data"
    BUG = "bug"


def classify(exc: BaseException) -> Fault:
    if database_unreachable(exc):
        return Fault.OUTAGE
    if isinstance(exc, DataError | IntegrityError | ValueError | OverflowError):
        return Fault.DATA
    return Fault.BUG


def failure_code(exc: BaseException) -> Code:
    """The code a failed event's notification carries: 7004 for its data, 7005 for our bug."""
    return Code.INVALID_VALUES if classify(exc) is Fault.DATA else Code.INTERNAL_ERROR


def reason(exc: BaseException) -> str:
    """The failed transaction's ``error``: the database's own message, not the statement and
    its parameters (which hold the rows of every event in the run)."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {cause}"[:MAX_REASON]


class Backoff:
    """The pause after a run found the database unreachable, before its messages go back to the
    queue: 0.5 s, 1 s, 2 s ... up to 30 s while the outage lasts, from 0.5 s again once a run
    reached the database. Without it a worker would take its messages and give them back as fast
    as the broker hands them out, for as long as the outage lasts."""

    FIRST = 0.5
    MOST = 30.0

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep
        self._outages = 0

    def pause(self) -> None:
        """Wait the next pause of this outage (however long it lasts: the count stops growing
        once the pause is the longest, so it never overflows a float)."""
        delay = min(self.MOST, self.FIRST * 2 ** self._outages)
        if delay < self.MOST:
            self._outages += 1
        self._sleep(delay)

    def reset(self) -> None:
        """The database answered: the next outage starts with the shortest pause."""
        self._outages = 0


def process_isolating(batches: Sequence[EventBatch], run: Run, record: Record) -> list[int]:
    """``run`` the batches at once; if that fails, find the failing events and ``record`` them
    (:func:`isolating`)."""
    def singles() -> list[EventBatch]:
        return [batch if len(batch.events) == 1 else batch.model_copy(update={"events": [event]})
                for batch in batches for event in batch.events]

    return isolating(lambda: run(batches), singles, run, record, kind="event",
                     name=lambda single: {"transid": single.events[0].transid})


def isolating(run_all: Callable[[], list[int]], singles: Callable[[], Sequence[T]],
              run: Callable[[Sequence[T]], list[int]],
              record: Callable[[T, BaseException], list[int]], *, kind: str,
              name: Callable[[T], dict[str, object]]) -> list[int]:
    """``run_all`` (the whole job at once); if that fails, find the failing ``singles`` by
    halving (``run`` on a part) and ``record`` each.

    Returns the delivery ids of every run and record. Raises only an outage (module docstring):
    then some parts may have committed, and the redelivered messages find their work taken.
    ``kind`` and ``name`` are for the logs: what an item is ("event", "mail"), and the fields
    that name one.
    """
    try:
        return run_all()
    except Exception as exc:
        if classify(exc) is Fault.OUTAGE:
            raise
        error = exc
    items = list(singles())
    log.warning(f"run failed, isolating its failing {kind}s", items=len(items),
                error=reason(error))
    return _Isolation(run, record, kind, name).isolate(items, error)


class _Isolation(Generic[T]):
    def __init__(self, run: Callable[[Sequence[T]], list[int]],
                 record: Callable[[T, BaseException], list[int]], kind: str,
                 name: Callable[[T], dict[str, object]]) -> None:
        self._run, self._record, self._kind, self._name = run, record, kind, name

    def isolate(self, singles: list[T], error: Exception) -> list[int]:
        """``singles`` failed together with ``error``: halve until each failing one is alone,
        and record it."""
        if len(singles) == 1:
            return self._fail(singles[0], error)
        middle = len(singles) // 2
        ids: list[int] = []
        for part in (singles[:middle], singles[middle:]):
            try:
                ids += self._run(part)
            except Exception as exc:
                if classify(exc) is Fault.OUTAGE:
                    raise
                ids += self.isolate(part, exc)
        return ids

    def _fail(self, single: T, error: Exception) -> list[int]:
        fault = classify(error)
        named = self._name(single)
        # A bug gets its traceback; a data error is the caller's, and its reason says enough.
        (log.error if fault is Fault.BUG else log.warning)(
            f"{self._kind} failed alone", **named, fault=str(fault), error=reason(error),
            exc_info=error if fault is Fault.BUG else None)
        try:
            return self._record(single, error)
        except Exception as exc:
            if classify(exc) is Fault.OUTAGE:
                raise
            log.error(f"{self._kind} failed, and its failure cannot be recorded", **named,
                      error=reason(exc))
            return []
