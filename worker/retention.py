"""``retention.purge`` (Celery beat, every EVENTDESK_PURGE_INTERVAL): retention on a schedule.

Each run spends at most half the interval, so a purge that falls behind (a first run on a full
database) never holds a worker process for long; the next run carries on where work is left.
"""

from __future__ import annotations

from datetime import UTC, datetime

from shared.logs import get_logger
from shared.messaging import RETENTION_PURGE
from shared.retention.service import horizon_for, purge
from shared.settings import get_settings
from worker.app import app

log = get_logger("eventdesk.retention")


@app.task(name=RETENTION_PURGE)
def purge_expired() -> int:
    settings = get_settings()
    result = purge(horizon_for(settings, datetime.now(UTC)),
                   budget_seconds=settings.purge_interval.total_seconds() / 2)
    log.info("retention purge", **result.counts(), batches=result.batches,
             seconds=round(result.seconds, 3), complete=result.complete)
    return result.transactions
