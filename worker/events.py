"""``events.process``: turn a batch of accepted events into requests."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from shared.db.engine import session_scope
from shared.publish import NOTIFY_QUEUE
from shared.settings import get_settings
from shared.transactions.schemas import PROCESS_TASK, EventBatch
from shared.transactions.service import process_batch
from worker.app import app

# Backoff is capped at a minute (below the Redis visibility timeout) and jittered, so a retry
# waits 30 s on average: enough retries to ride out EVENTDESK_DB_RETRY_WINDOW_SECONDS.
RETRY_BACKOFF_MAX = 60
DB_RETRIES = math.ceil(get_settings().db_retry_window_seconds / (RETRY_BACKOFF_MAX / 2))
DATABASE_DOWN = (OperationalError, InterfaceError)


@app.task(
    name=PROCESS_TASK, autoretry_for=DATABASE_DOWN, max_retries=DB_RETRIES,
    retry_backoff=True, retry_backoff_max=RETRY_BACKOFF_MAX, retry_jitter=True,
)
def process(batch: dict[str, Any]) -> None:
    parsed = EventBatch.model_validate(batch)
    with session_scope() as session:
        delivery_ids = process_batch(session, parsed, datetime.now(UTC))
    # Queued only now that the rows they read have committed.
    for delivery_id in delivery_ids:
        app.send_task("notify.deliver", args=[delivery_id], queue=NOTIFY_QUEUE)
