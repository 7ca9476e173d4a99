"""``notify.deliver``: one attempt of a delivery to its notify URL (``shared/notify/delivery.py``).

The task never retries an attempt itself: the delivery's schedule lives in the database, and the
sweeper (``worker/sweeper.py``) queues the next attempt when it is due. Celery retries only a
database outage before the claim, a few times; past those, the sweeper picks the delivery up.
"""

from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError

from shared.notify.delivery import deliver as deliver_once
from shared.notify.rules import Policy
from shared.settings import get_settings
from worker.app import app

# Longer than any attempt (its watchdog) plus its two short transactions: only a task that hangs
# on something else (the database) is stopped, and its delivery's lease then runs out.
TIME_LIMIT = Policy.from_settings(get_settings()).lease


@app.task(
    name="notify.deliver", autoretry_for=(OperationalError, InterfaceError), max_retries=5,
    retry_backoff=True, retry_backoff_max=60, retry_jitter=True, time_limit=TIME_LIMIT,
)
def deliver(delivery_id: int) -> None:
    deliver_once(int(delivery_id), Policy.from_settings(get_settings()))
