"""The Celery app: broker, queues, routes, and the delivery guarantees.

``celery -A worker.app worker -Q events,mail,notify`` (or ``eventdesk worker``).

Durability ("nothing acknowledged is lost", DESIGN 6): messages are acknowledged only after the
task returns (``acks_late``), a task whose worker process dies is requeued
(``task_reject_on_worker_lost``), and on Redis a message is taken and recorded as in flight in
one atomic step, and a dead worker's messages return to their queue as soon as a live worker
notices (worker/broker.py). ``visibility_timeout`` (EVENTDESK_VISIBILITY_TIMEOUT_SECONDS, default
300 s) hands a message out again when a live worker has held it that long: it must exceed the
longest task, and retries are capped below it so a waiting retry is not handed out twice.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init
from kombu import Queue

from shared import collector
from shared.db.engine import dispose_engines, use_statement_timeout
from shared.messaging import (
    EVENTS_QUEUE,
    MAIL_SWEEP,
    NOTIFY_SWEEP,
    QUEUES,
    RETENTION_PURGE,
    ROUTES,
)
from shared.settings import get_settings
from worker import signals  # noqa: F401 - connects the log and metrics handlers
from worker.broker import REAP_INTERVAL

TASK_MODULES = ["worker.events", "worker.mail", "worker.notify", "worker.sweeper",
                "worker.retention"]


def make_celery() -> Celery:
    settings = get_settings()
    # A batch is one transaction of up to a thousand events: the api's few seconds would fail
    # big batches, and an outage is ridden out by requeueing (worker/events.py), not by it.
    use_statement_timeout(settings.worker_statement_timeout_seconds)
    broker_url = settings.resolved_broker_url()
    transport_options: dict[str, Any] = {}
    transport: str | None = None
    if broker_url.startswith(("redis://", "rediss://")):
        transport_options["visibility_timeout"] = settings.visibility_timeout_seconds
        # How often a worker looks for dead workers' messages (worker/broker.py).
        transport_options["unacked_restore_interval"] = REAP_INTERVAL
        # rediss:// keeps kombu's own transport, which derives its TLS settings from the scheme.
        if broker_url.startswith("redis://"):
            transport = "worker.broker:Transport"
    elif broker_url.startswith("sqla+"):
        # kombu hands every option of this transport to create_engine(), so its polling
        # interval (1 s by default: the embedded mode's latency) is set on the class instead.
        from kombu.transport.sqlalchemy import Transport

        Transport.polling_interval = 0.1
        transport_options = {"connect_args": {"timeout": 30}}
    sweep_every = settings.notify_sweep_interval_seconds
    purge_every = settings.purge_interval.total_seconds()
    app = Celery("eventdesk", broker=broker_url, include=TASK_MODULES)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Enough messages in hand to fill a batch of events.process (worker/events.py).
        worker_prefetch_multiplier=settings.worker_batch_size,
        broker_transport=transport,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(name, routing_key=name, durable=True) for name in QUEUES],
        task_default_queue=EVENTS_QUEUE,
        task_routes={task: {"queue": queue} for task, queue in ROUTES.items()},
        worker_hijack_root_logger=False,
        enable_utc=True,
        # The notify sweeper (worker/sweeper.py), run by ``celery beat`` (``eventdesk beat``, or
        # the worker's -B in ``eventdesk run``). Its schedule is kept in memory only: missing a
        # sweep costs nothing, and there is no state file to write.
        beat_scheduler="celery.beat:Scheduler",
        beat_schedule={NOTIFY_SWEEP: {
            "task": NOTIFY_SWEEP, "schedule": sweep_every,
            # A sweep that waited in a long queue is dropped: a newer one is behind it.
            "options": {"queue": ROUTES[NOTIFY_SWEEP], "expires": max(6 * sweep_every, 30)},
        }, RETENTION_PURGE: {
            # Retention (worker/retention.py); one waiting longer than its interval is dropped.
            "task": RETENTION_PURGE, "schedule": purge_every,
            "options": {"queue": ROUTES[RETENTION_PURGE], "expires": purge_every},
        }, MAIL_SWEEP: {
            # Mail stored but never queued (worker/mail.py); a missed sweep costs nothing.
            "task": MAIL_SWEEP, "schedule": 60.0,
            "options": {"queue": ROUTES[MAIL_SWEEP], "expires": 120},
        }},
    )
    return app


app = make_celery()


@worker_process_init.connect
def _fresh_engines(**_: Any) -> None:
    # A forked child must not reuse the parent's pooled database connections.
    dispose_engines()


@worker_init.connect
@worker_process_init.connect
def _settle_collector(**_: Any) -> None:
    # In the main process before its pool forks, and in each pool process after its set-up:
    # connected after worker/signals.py's receivers (imported above) and _fresh_engines, it
    # runs after them.
    collector.settle()
