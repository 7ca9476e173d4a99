"""The baseline for the end-to-end benchmark: a standard Celery worker draining no-op tasks.

One task, ``bench.noop``, that does nothing, on its own queue ``bench-noop``; Celery's defaults
otherwise (one task a message, acknowledged when it starts, prefetch multiplier 4), so its drain
rate is what Celery itself costs per message on this machine. The broker comes from
``BENCH_BROKER_URL`` (default ``redis://127.0.0.1:6379/13``)::

    celery -A bench.noop_app worker -Q bench-noop --concurrency 2
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "bench-noop"
TASK = "bench.noop"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/13"

app = Celery("bench-noop", broker=os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL))
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop() -> None:
    """Nothing: the cost measured is Celery's own."""
