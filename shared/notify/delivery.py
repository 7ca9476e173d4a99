"""One delivery attempt: POST the signed payload, record what happened.

Redirects are not followed (a redirect is how an allowed URL would reach a forbidden one), and
connect/read timeouts are explicit.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import httpx
from sqlalchemy.orm import Session

from shared.db.models import Account, NotificationAttempt, NotificationDelivery
from shared.notify import signing

_RESPONSE_KEEP = 1024


def attempt(session: Session, delivery_id: int, now: datetime, timeout: float) -> str | None:
    """Try delivery ``delivery_id`` once if it is still pending; returns its new status."""
    delivery = session.get(NotificationDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.status != "pending":
        return None
    account = session.get(Account, delivery.account_id)
    secrets = list(account.signing_secrets) if account else []
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    headers = signing.headers(secrets, delivery.message_id, int(now.timestamp()), body)
    record = NotificationAttempt(delivery_id=delivery.id, attempted_at=now)
    started = time.monotonic()
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                          follow_redirects=False) as client:
            response = client.post(delivery.url, content=body, headers=headers)
        record.status_code = response.status_code
        record.response = response.text[:_RESPONSE_KEEP]
        delivered = 200 <= response.status_code < 300
    except httpx.HTTPError as exc:
        record.error = type(exc).__name__
        delivered = False
    record.duration_ms = int((time.monotonic() - started) * 1000)
    delivery.attempts += 1
    delivery.status = "delivered" if delivered else "failed"
    delivery.updated_at = now
    session.add(record)
    return delivery.status
