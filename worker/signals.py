"""Celery signals: logs, task metrics and the metrics exporter, kept out of the task bodies.

- ``setup_logging``: JSON logs (``shared.logs``) instead of Celery's own formatting.
- ``worker_ready`` (the main process): serve ``/metrics`` on EVENTDESK_WORKER_METRICS_PORT, the
  sum of every pool process's values plus the queue depths and dependency probes read at scrape
  time.
- ``task_prerun``/``task_postrun``: task duration, and ``task_id``/``task`` bound to every log
  line logged while the task runs; ``task_failure``, ``task_retry``: their counters.
- ``worker_process_shutdown``: multiprocess bookkeeping for a pool process that exits.
"""

from __future__ import annotations

import os
import time
from typing import Any

import structlog
from celery.signals import (
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from shared import logs, metrics
from shared.logs import get_logger
from shared.messaging import QUEUES
from shared.settings import get_settings

log = get_logger(__name__)
_started: dict[str, float] = {}
_exporter: list[Any] = []


def _task_name(task: Any) -> str:
    return str(getattr(task, "name", None) or "unknown")


@setup_logging.connect
def _logs(loglevel: int | str | None = None, **_: Any) -> None:
    logs.configure("worker", loglevel or get_settings().log_level)


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    from shared.probe import Probe

    settings = get_settings()
    if not settings.worker_metrics_port or _exporter:
        return
    path = settings.prometheus_multiproc_dir
    if path is None:
        log.warning("metrics of the pool processes are not exported: PROMETHEUS_MULTIPROC_DIR "
                    "is not set (start the worker with 'eventdesk worker')")
    probe = Probe(settings.resolved_broker_url(), settings.resolved_database_url(), QUEUES)
    target = metrics.registry(path, [metrics.ProbeCollector(probe)])
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    try:
        _exporter.append(metrics.start_exporter(host, port, target))
    except OSError as exc:  # metrics are not worth stopping the worker for
        log.warning("metrics exporter did not start: set EVENTDESK_WORKER_METRICS_PORT to a free "
                    "port (0: none)", host=host, port=port, error=str(exc))
        return
    log.info("metrics exporter listening", host=host, port=port)


@worker_process_init.connect
def _zero_series(**_: Any) -> None:
    metrics.initialize("worker")


@worker_process_shutdown.connect
def _process_gone(**_: Any) -> None:
    metrics.mark_process_dead(os.getpid(), get_settings().prometheus_multiproc_dir)


@task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=_task_name(task))


@task_postrun.connect
def _task_finished(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    started = _started.pop(task_id, None) if task_id else None
    if started is not None:
        metrics.task_duration.labels(_task_name(task)).observe(time.perf_counter() - started)
    structlog.contextvars.unbind_contextvars("task_id", "task")


@task_failure.connect
def _task_failed(sender: Any = None, **_: Any) -> None:
    metrics.task_failures.labels(_task_name(sender)).inc()


@task_retry.connect
def _task_retried(sender: Any = None, **_: Any) -> None:
    metrics.task_retries.labels(_task_name(sender)).inc()
