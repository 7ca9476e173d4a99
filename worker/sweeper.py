"""``notify.sweep`` (Celery beat, every EVENTDESK_NOTIFY_SWEEP_INTERVAL_SECONDS): queue what is due.

Queues ``notify.deliver`` for every delivery whose next attempt is due (in batches), and takes back
deliveries whose worker died mid-attempt (``shared/notify/delivery.py`` ``sweep``). Publishing
happens after the commit; if it fails, the deliveries are queued again by a later sweep.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from shared.db.engine import session_scope
from shared.messaging import NOTIFY_SWEEP
from shared.notify.delivery import sweep as sweep_due
from shared.notify.rules import Policy
from shared.settings import get_settings
from worker.app import app
from worker.notify import queue_deliveries


@app.task(name=NOTIFY_SWEEP)
def sweep() -> int:
    policy = Policy.from_settings(get_settings())
    with session_scope() as session:
        due = sweep_due(session, datetime.now(UTC), policy, random.random)
    queue_deliveries(due)
    return len(due)
