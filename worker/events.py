"""``events.process``: turn queued events into requests, many messages per database transaction.

A plain one-task-per-message worker drains far fewer messages a second than the intake takes
(DESIGN 2; bench/README.md, the no-op worker's rate), so the task is a celery-batches task: the
worker's consumer buffers up to ``EVENTDESK_WORKER_BATCH_SIZE`` messages (or what arrived within
``EVENTDESK_WORKER_BATCH_WAIT_SECONDS``) and hands them to its pool processes in jobs of up to
``EVENTDESK_WORKER_BATCH_EVENTS`` events, each processed in one database transaction: a burst of
large messages keeps every pool process busy instead of one. A message holds one or more event
batches (the api's group commit, shared/messaging/queueing.py).

Acknowledgement is ours, because celery-batches' own acknowledges a batch whatever happened to
it: the messages of a batch are acknowledged only after its events are done (committed, or
recorded ``failed``); they go back to the queue when the database is unreachable and when the
pool process dies mid-batch. What is done with the events, and when the database counts as
unreachable, is the transactions service's (``process_job`` in shared/transactions/service.py,
its policy in shared/transactions/failures.py): the task parses, calls it and acknowledges.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery_batches import Batches, SimpleRequest, apply_batches_task
from pydantic import ValidationError

from shared.batching import runs
from shared.messaging import EVENTS_PROCESS
from shared.records.directory import Directory
from shared.settings import get_settings
from shared.transactions.failures import Backoff
from shared.transactions.schemas import EventBatch
from shared.transactions.service import process_job
from worker.app import app
from worker.notify import queue_deliveries

log = logging.getLogger(__name__)
settings = get_settings()
# One per pool process: reference records, reloaded after the cache TTL.
DIRECTORY = Directory(settings.cache_ttl_seconds)
# One per pool process too: how long the database has been found unreachable.
BACKOFF = Backoff()


def events_in(request: Any) -> int:
    """The events a message carries (1 for one that is not ours)."""
    try:
        return sum(len(arg["events"]) for arg in request.args)
    except (TypeError, KeyError):  # not a message of ours: process() logs it and drops it
        return 1


class EventBatches(Batches):  # type: ignore[misc]
    """celery-batches' task, with our flush and acknowledgement, and a buffer that survives a
    broker reconnect (DESIGN 6: after any reconnect, buffered work is processed within the batch
    wait)."""

    flush_every = settings.worker_batch_size
    flush_interval = settings.worker_batch_wait_seconds
    _tref: Any  # celery-batches' flush timer entry, None while the buffer is empty

    def __init__(self) -> None:
        super().__init__()
        # Jobs handed to the pool whose result has not come back: their ApplyResult, requests.
        self._in_pool: dict[int, tuple[Any, list[Any]]] = {}

    def Strategy(self, task: Batches, app: Any, consumer: Any) -> Any:  # noqa: N802 - Celery's name
        """Called on every consumer start, so the one place that sees each broker reconnect:
        give back to the buffer what the reconnect took away, and re-arm the flush timer.

        On a connection error Celery clears its event loop's timers (``asynloop``), the flush
        timer among them. celery-batches (0.11) arms the timer only when a message arrives while
        ``_tref`` is None, and ``_tref`` still named the cleared entry: the time-based flush
        never came back, and buffered messages waited for ``flush_every`` more to arrive
        (celery-batches #99, #107). So the stale entry is dropped, and the timer armed at once
        when the buffer holds anything, since nothing else may ever arrive for it.

        The prefork pool also drops the jobs no process has taken yet (``AsynPool.flush``: "the
        broker will redeliver them"). RabbitMQ does at once; on Redis they wait in the dropped
        channel's unacked hash until a live consumer finds it dead (up to the 15 s heartbeat,
        worker/broker.py). Those jobs' requests go back in the buffer instead. Processing a
        message twice, when the broker redelivers its copy too, changes nothing (docs/operations.md:
        "Processed once").
        """
        for key, (result, requests) in list(self._in_pool.items()):
            if not result.accepted():
                del self._in_pool[key]
                for request in requests:
                    self._buffer.put(request)
        self._stop_timer()  # a Celery that does not clear its timers would fire it twice
        handler = super().Strategy(task, app, consumer)
        if self._holding():
            self._tref = consumer.timer.call_repeatedly(self.flush_interval, self._do_flush)
        return handler

    def _holding(self) -> bool:
        """Whether requests wait in celery-batches' buffer or its pending queue."""
        return not (self._buffer.empty() and self._pending.empty())

    def _stop_timer(self) -> None:
        """Cancel the flush timer; celery-batches arms it again at the next message."""
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def flush(self, requests: Sequence[Any]) -> None:
        for job in runs(requests, events_in, settings.worker_batch_events):
            self._apply(job)

    def _apply(self, requests: list[Any]) -> None:
        key = id(requests)

        def on_return(done: object) -> None:
            self._in_pool.pop(key, None)
            for request in requests:
                if done is True:
                    request.acknowledge()
                else:
                    request.reject(requeue=True)

        def on_error(_: BaseException) -> None:  # the pool process died (WorkerLostError)
            self._in_pool.pop(key, None)
            for request in requests:
                request.reject(requeue=True)

        simple = ([SimpleRequest.from_request(request) for request in requests],)
        self._in_pool[key] = (self._pool.apply_async(
            apply_batches_task, (self, simple, 0, None),
            callback=on_return, error_callback=on_error,
        ), requests)


@app.task(name=EVENTS_PROCESS, base=EventBatches, acks_late=True)
def process(requests: list[SimpleRequest]) -> bool:
    """True: every message is done (acknowledge them); False: put them back on the queue."""
    batches: list[EventBatch] = []
    for request in requests:
        try:
            batches += [EventBatch.model_validate(arg) for arg in request.args]
        except (ValidationError, TypeError):
            # Not a message our api wrote; nothing in it can be recorded. Dropped, loudly.
            log.error("events.process: unreadable message %s dropped", request.id)
    delivery_ids = process_job(batches, DIRECTORY, BACKOFF) if batches else []
    if delivery_ids is None:
        return False
    # Queued only now that the rows they read have committed.
    queue_deliveries(delivery_ids)
    return True
