"""The delivery rules, as pure functions: what an attempt's result means, and when to try again.

A delivery (``NotificationDelivery``) moves through these states::

    pending ──claim──▶ sending ──2xx──────────────▶ delivered
       ▲                  │ ────3xx, 4xx, refused──▶ failed     (permanent: never retried)
       │                  │ ────410 Gone───────────▶ disabled   (and the URL is disabled)
       └──retry (when due)┘ ────retryable, last────▶ dead
    pending ──URL disabled earlier──▶ disabled       (no attempt is made)

Retryable: connection errors, timeouts, 408, 429 and 5xx (a Retry-After on 429/503 is honoured,
capped). Every other status is permanent, and so is a refused address (the SSRF guard) or a
malformed URL: retrying cannot help. Redirects are not followed; a 3xx is a permanent failure
(a redirect is how an allowed URL would lead to a forbidden one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

from shared.notify.ssrf import IPNetwork, parse_networks
from shared.settings import Settings

Kind = Literal["delivered", "retry", "failed", "disable"]

# States a delivery can be in; the last four are final (until a redelivery).
STATES = ("pending", "sending", "delivered", "failed", "disabled", "dead")
FINAL = frozenset({"delivered", "failed", "disabled", "dead"})
# What an operator may replay (POST /v1/transactions/<transid>/redeliver).
REPLAYABLE = FINAL

RETRY_STATUSES = frozenset({408, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
# Error classes (exception names) that retrying cannot fix.
PERMANENT_ERRORS = frozenset({
    "ForbiddenAddress", "InvalidURL", "UnsupportedProtocol", "LocalProtocolError",
})


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    # Seconds the receiver asked us to wait (Retry-After), when it did.
    retry_after: float | None = None


def classify(
    status_code: int | None, error: str | None, retry_after: str | None = None,
    now: datetime | None = None,
) -> Verdict:
    """What one attempt's result means: its HTTP status, or the class of the error it raised."""
    if status_code is None:
        return Verdict("failed" if error in PERMANENT_ERRORS else "retry")
    if 200 <= status_code < 300:
        return Verdict("delivered")
    if status_code == 410:
        return Verdict("disable")
    if status_code in RETRY_STATUSES or 500 <= status_code < 600:
        wait = parse_retry_after(retry_after, now) if status_code in RETRY_AFTER_STATUSES else None
        return Verdict("retry", wait)
    return Verdict("failed")


def parse_retry_after(value: str | None, now: datetime | None) -> float | None:
    """Retry-After in seconds: ``120`` or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if now is None or when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def next_delay(
    schedule: tuple[float, ...], tried: int, *, jitter: float, draw: float,
    retry_after: float | None = None, retry_after_max: float = math.inf,
) -> float | None:
    """Seconds until the next attempt, after ``tried`` attempts of this schedule; None: no more.

    ``schedule[n]`` is the wait before attempt ``n + 1``. The wait is scaled by a factor in
    ``[1 - jitter, 1 + jitter)`` picked by ``draw`` in ``[0, 1)`` (so that many deliveries that
    failed together do not all come back at once). A receiver's Retry-After, capped at
    ``retry_after_max``, is waited for at least.
    """
    if tried >= len(schedule):
        return None
    delay = schedule[tried] * (1 + jitter * (2 * draw - 1))
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry_after_max))
    return max(0.0, delay)


# How long a delivery whose host has no free slot waits before it is claimed again.
BUSY_WAIT = 0.05


def busy_wait(draw: float) -> float:
    """Seconds until a delivery deferred for want of a host slot is due again: short, since the
    slots of a fast receiver come free within milliseconds; jittered, so that the claimers that
    found them taken do not all come back at once."""
    return BUSY_WAIT * (1 + draw)


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"0,30,120"`` -> (0.0, 30.0, 120.0); at least one attempt, no negative waits."""
    schedule = tuple(float(part) for part in text.split(",") if part.strip())
    if not schedule or any(delay < 0 or not math.isfinite(delay) for delay in schedule):
        raise ValueError(f"bad notify schedule {text!r}: non-negative seconds, comma-separated")
    return schedule


def host_key(url: str) -> str:
    """The receiver a URL names, for the per-host limit: ``host:port``, lower case.

    The port is part of it: two servers on one host name are two receivers as far as we can
    tell, and one of them being slow must not hold back the other.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"[:255]


@dataclass(frozen=True)
class Policy:
    """The delivery settings, read once per worker process from :class:`Settings`."""

    schedule: tuple[float, ...]
    jitter: float
    connect_timeout: float
    read_timeout: float
    retry_after_max: float
    host_concurrency: int
    lease_margin: float
    sweep_interval: float
    requeue: float
    allow: tuple[IPNetwork, ...]
    # POSTs a second to one host, per worker process (0: no limit but the in-flight one).
    host_rate: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            schedule=parse_schedule(settings.notify_schedule),
            jitter=settings.notify_jitter,
            connect_timeout=settings.notify_connect_timeout_seconds,
            read_timeout=settings.notify_timeout_seconds,
            retry_after_max=settings.notify_retry_after_max_seconds,
            host_concurrency=settings.notify_host_concurrency,
            lease_margin=settings.notify_lease_margin_seconds,
            sweep_interval=settings.notify_sweep_interval_seconds,
            requeue=settings.notify_requeue_seconds,
            allow=parse_networks(settings.notify_allow_networks),
            host_rate=settings.notify_host_rate,
        )

    @property
    def deadline(self) -> float:
        """The longest one attempt may take, all included (enforced in shared/notify/http.py)."""
        return self.connect_timeout + self.read_timeout

    @property
    def lease(self) -> float:
        """How long a claimed delivery stays a worker's: past it, the worker is presumed dead."""
        return self.deadline + self.lease_margin
