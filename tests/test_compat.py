"""Contracts with the private parts of celery-batches and Celery that worker/events.py relies on.

Each test names what an upgrade removed or changed, so the failure says where to look instead
of a batch that silently stops flushing.
"""

from __future__ import annotations

import inspect
import time
from types import SimpleNamespace
from typing import Any

from celery.concurrency.asynpool import AsynPool
from celery_batches import Batches
from kombu.asynchronous.timer import Timer

from tests.conftest import wait_until
from worker.events import EventBatches, process


class Pool:
    """Records the jobs handed to it; none is ever accepted by a process."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def apply_async(self, *args: Any, **_options: Any) -> SimpleNamespace:
        self.jobs.append(args[1][1][0])  # the SimpleRequests of the job
        return SimpleNamespace(accepted=lambda: False)


def test_batches_keeps_the_attributes_eventbatches_overrides() -> None:
    task = Batches()
    for name in ("_buffer", "_pending", "_tref", "_pool"):
        assert hasattr(task, name), f"celery_batches.Batches has no {name} any more"
    assert list(inspect.signature(Batches._do_flush).parameters) == ["self"], "Batches._do_flush"
    assert list(inspect.signature(Batches.Strategy).parameters) == [
        "self", "task", "app", "consumer"], "Batches.Strategy"


def test_batches_arms_its_timer_only_while_tref_is_none() -> None:
    """If a release re-arms the timer itself (celery-batches #108), EventBatches.Strategy's
    re-arm may be dropped."""
    assert "if self._tref is None" in inspect.getsource(Batches.Strategy), "Batches.Strategy"


def test_prefork_pool_drops_unaccepted_jobs_on_reconnect() -> None:
    """EventBatches.Strategy gives such jobs back to the buffer, asking ``accepted()``."""
    assert "not job._accepted" in inspect.getsource(AsynPool.flush), "AsynPool.flush"


def _consumer(pool: Pool) -> SimpleNamespace:
    return SimpleNamespace(pool=pool, hostname="test@host", connection_errors=(),
                           event_dispatcher=None, timer=Timer())


def _request(number: int) -> SimpleNamespace:
    """What ``_do_flush`` and ``SimpleRequest.from_request`` read of a Celery request."""
    return SimpleNamespace(
        eta=None, args=({"events": [{}]},), _payload=(({"events": [{}]},), {}, {}),
        id=f"request-{number}", name="events.process", delivery_info={}, hostname="test@host",
        reply_to=None, correlation_id=None, request_dict={})


def _run_due(timer: Timer) -> bool:
    """One turn of the event loop's timer: run the entries that are due."""
    entries = iter(timer)
    while (entry := next(entries)[1]) is not None:
        timer.apply_entry(entry)
    return True


def test_reconnect_rearms_the_flush_timer_and_gives_back_dropped_jobs() -> None:
    pool = Pool()
    task = EventBatches()
    consumer = _consumer(pool)
    task.Strategy(task, process.app, consumer)
    task.flush([_request(1)])  # handed to the pool; no process takes it before the reconnect
    task._buffer.put(_request(2))
    task._tref = consumer.timer.call_repeatedly(task.flush_interval, task._do_flush)
    consumer.timer.clear()  # Celery's asynloop, on a connection error

    task.Strategy(task, process.app, consumer)  # Celery's consumer restart
    started = time.monotonic()
    wait_until(lambda: _run_due(consumer.timer) and len(pool.jobs) == 2, 5, 0.01)

    assert time.monotonic() - started < task.flush_interval + 0.5
    assert sorted(request.id for request in pool.jobs[1]) == ["request-1", "request-2"]
