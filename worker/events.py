"""``events.process``: turn queued events into requests, many messages per database transaction.

A plain one-task-per-message worker drains about 800 messages a second on two cores (DESIGN 2),
so the task is a celery-batches task: the worker's consumer buffers up to
``EVENTDESK_WORKER_BATCH_SIZE`` messages (or what arrived within
``EVENTDESK_WORKER_BATCH_WAIT_SECONDS``) and hands them to its pool processes in jobs of up to
``EVENTDESK_WORKER_BATCH_EVENTS`` events, each processed in one database transaction: a burst
of large messages keeps every pool process busy instead of one. A message holds one or more
event batches (the api's group commit, shared/intake/queueing.py).

Acknowledgement is ours, because celery-batches' own acknowledges a batch whatever happened to
it: the messages of a batch are acknowledged only after its transaction committed; they go back
to the queue when the database is unreachable (after a pause that grows while it stays down, so
an outage costs no retry budget and loses nothing) and when the pool process dies mid-batch.
A message that fails for any other reason (a bug) is processed alone, and if it still fails its
events are recorded as ``failed`` with the error, visible on the status endpoint, then
acknowledged: never silently dropped, never retried forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from celery_batches import Batches, SimpleRequest, apply_batches_task
from pydantic import ValidationError

from shared.batching import runs
from shared.db.engine import database_unreachable, session_scope
from shared.publish import NOTIFY_QUEUE
from shared.records.directory import Directory
from shared.settings import get_settings
from shared.transactions.processing import process_batches, record_failure
from shared.transactions.schemas import PROCESS_TASK, EventBatch
from worker.app import app

log = logging.getLogger(__name__)
settings = get_settings()
# One per pool process: reference records, reloaded after the cache TTL.
DIRECTORY = Directory(settings.cache_ttl_seconds)
MAX_PAUSE = 30.0
_outage = {"pauses": 0}


def _pause() -> None:
    """Back off while the database is down: 0.5 s, 1 s, 2 s ... up to 30 s."""
    delay = min(MAX_PAUSE, 0.5 * 2 ** _outage["pauses"])
    _outage["pauses"] += 1
    time.sleep(delay)


def _run(batches: Sequence[EventBatch]) -> list[int]:
    with session_scope() as session:
        return process_batches(session, batches, datetime.now(UTC), DIRECTORY)


def events_in(request: Any) -> int:
    """The events a message carries (1 for one that is not ours)."""
    try:
        return sum(len(arg["events"]) for arg in request.args)
    except (TypeError, KeyError):  # not a message of ours: process() logs it and drops it
        return 1


class EventBatches(Batches):  # type: ignore[misc]
    flush_every = settings.worker_batch_size
    flush_interval = settings.worker_batch_wait_seconds

    def flush(self, requests: Sequence[Any]) -> None:
        for job in runs(requests, events_in, settings.worker_batch_events):
            self._apply(job)

    def _apply(self, requests: list[Any]) -> None:
        def on_return(done: object) -> None:
            for request in requests:
                if done is True:
                    request.acknowledge()
                else:
                    request.reject(requeue=True)

        def on_error(_: BaseException) -> None:  # the pool process died (WorkerLostError)
            for request in requests:
                request.reject(requeue=True)

        simple = ([SimpleRequest.from_request(request) for request in requests],)
        self._pool.apply_async(
            apply_batches_task, (self, simple, 0, None),
            callback=on_return, error_callback=on_error,
        )


@app.task(name=PROCESS_TASK, base=EventBatches, acks_late=True)
def process(requests: list[SimpleRequest]) -> bool:
    """True: every message is done (acknowledge them); False: put them back on the queue."""
    batches: list[EventBatch] = []
    for request in requests:
        try:
            batches += [EventBatch.model_validate(arg) for arg in request.args]
        except (ValidationError, TypeError):
            # Not a message our api wrote; nothing in it can be recorded. Dropped, loudly.
            log.error("events.process: unreadable message %s dropped", request.id)
    try:
        delivery_ids = _run(batches) if batches else []
    except Exception as exc:
        if database_unreachable(exc):
            log.warning("database unreachable, batch of %d requeued: %s", len(requests), exc)
            _pause()
            return False
        log.exception("batch failed; processing its messages one by one")
        try:
            delivery_ids = _one_by_one(batches)
        except Exception as inner:
            if database_unreachable(inner):
                _pause()
                return False
            raise
    _outage["pauses"] = 0
    # Queued only now that the rows they read have committed.
    for delivery_id in delivery_ids:
        app.send_task("notify.deliver", args=[delivery_id], queue=NOTIFY_QUEUE)
    return True


def _one_by_one(batches: Sequence[EventBatch]) -> list[int]:
    delivery_ids: list[int] = []
    for batch in batches:
        try:
            delivery_ids += _run([batch])
        except Exception as exc:
            if database_unreachable(exc):
                raise
            log.exception("message of %d events failed; recorded as failed", len(batch.events))
            with session_scope() as session:
                delivery_ids += record_failure(
                    session, batch, f"{type(exc).__name__}: {exc}", datetime.now(UTC))
    return delivery_ids
