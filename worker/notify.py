"""``notify.deliver``: POST one transaction's outcome to its notify URL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.exc import InterfaceError, OperationalError

from shared.db.engine import session_scope
from shared.notify.delivery import attempt
from shared.settings import get_settings
from worker.app import app


@app.task(
    name="notify.deliver", autoretry_for=(OperationalError, InterfaceError), max_retries=60,
    retry_backoff=True, retry_backoff_max=60, retry_jitter=True,
)
def deliver(delivery_id: int) -> None:
    with session_scope() as session:
        attempt(session, delivery_id, datetime.now(UTC), get_settings().notify_timeout_seconds)
