"""``notify.deliver``: one attempt of each delivery a message names (``shared/notify/stream.py``).

A message carries up to ``NOTIFY_BATCH`` delivery ids as its arguments (one id, as an older
publisher wrote, is a batch of one). The task hands them to the process's :class:`Stream` and
returns once they are claimed: from then on they are the stream's, under their leases, and it
POSTs them concurrently on its kept-alive connections and records the outcomes in the
background, while the process takes its next message. A pool process that stops (a warm
shutdown) gives back what its stream has not sent, and records what it has.

The task never retries an attempt itself: the delivery's schedule lives in the database, and the
sweeper (``worker/sweeper.py``) queues the next attempt when it is due. Celery retries a
database outage of the claim, a few times; past those, the sweeper queues the deliveries again.
An outage while outcomes are recorded leaves them ``sending``: the sweeper takes them back when
their leases run out.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_process_shutdown

from shared.db.engine import database_unreachable
from shared.messaging import NOTIFY_DELIVER, NOTIFY_QUEUE, notify_batches
from shared.notify.rules import Policy
from shared.notify.stream import Stream
from shared.settings import get_settings
from worker.app import app

POLICY = Policy.from_settings(get_settings())
# Longer than a claim and the wait for a busy host's slots: only a task that hangs on something
# else (the database) is stopped.
TIME_LIMIT = POLICY.lease + POLICY.sweep_interval
_streams: dict[int, Stream] = {}


def _stream() -> Stream:
    # Made in the pool process that uses it: an event loop and sockets do not survive a fork.
    pid = os.getpid()
    if pid not in _streams:
        _streams[pid] = Stream(POLICY)
    return _streams[pid]


@app.task(name=NOTIFY_DELIVER, bind=True, max_retries=5, time_limit=TIME_LIMIT)
def deliver(self: Any, *delivery_ids: int) -> None:
    try:
        _stream().submit([int(delivery_id) for delivery_id in delivery_ids]).claimed.result()
    except Exception as exc:
        if not database_unreachable(exc):
            raise
        # 1, 2, 4 ... 16 s: the same test of an outage as the events worker's and the api's.
        raise self.retry(exc=exc, countdown=2 ** self.request.retries) from exc


@worker_process_shutdown.connect
def _close_stream(**_: Any) -> None:
    stream = _streams.pop(os.getpid(), None)
    if stream is not None:
        stream.close()


def queue_deliveries(delivery_ids: list[int]) -> None:
    """Publish ``notify.deliver`` for ``delivery_ids``, once their rows have committed."""
    for batch in notify_batches(delivery_ids):
        app.send_task(NOTIFY_DELIVER, args=batch, queue=NOTIFY_QUEUE)
