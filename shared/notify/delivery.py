"""The delivery state machine in the database (states and rules: ``shared/notify/rules.py``).

One attempt is three steps, and no database transaction is open during the HTTP call:

1. :func:`claim`, a short transaction: compare-and-set ``pending`` (and due) -> ``sending`` with a
   lease (``lease_token``, ``lease_until``) and a slot of the receiver's host (at most
   ``EVENTDESK_NOTIFY_HOST_CONCURRENCY`` in flight per host), then commit.
2. The POST (``shared/notify/http.py``), bounded by its timeouts and a watchdog to less than the
   lease.
3. :func:`record`, a short transaction: the attempt row, and the next state, set only if the lease
   is still ours (compare-and-set on ``lease_token``); the slot is freed.

Retries are scheduled by the database alone: a failed attempt sets ``next_attempt_at``, and the
sweeper (:func:`sweep`, every ``EVENTDESK_NOTIFY_SWEEP_INTERVAL_SECONDS``) publishes
``notify.deliver`` for each delivery that is due, and takes back any delivery whose worker died
(lease expired). Why not re-publish the task with a countdown: a countdown message is held,
unacknowledged, by a worker until it is due; on Redis it is handed out again after the visibility
timeout, on RabbitMQ it runs into ``consumer_timeout``, and a worker crash loses its timing. With
the schedule in the database, the only copy of "when" is a committed row, every path that could
lose a message (a crash, a lost publish, a broker restart) is covered by the same sweep, and a
retry is late by at most one sweep interval, which is small next to the schedule's waits. Extra
messages (a duplicate publish, a redelivered message) are harmless: a message for a delivery that
is not pending and due changes nothing.

So delivery is at least once, with a stable ``webhook-id`` (receivers deduplicate on it): a second
POST of one notification happens only when a worker dies, or the database is lost, between a POST
and its record.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import metrics
from shared.db.engine import session_scope
from shared.db.models import Account, NotificationAttempt, NotificationDelivery, NotifyDisabledUrl
from shared.logs import get_logger
from shared.notify import rules, signing, slots
from shared.notify.http import AttemptResult, Resolver, post, system_resolver
from shared.observe import after_commit

ND = NotificationDelivery
# A message may arrive a little before its delivery is due (clocks of two hosts): that early is
# still on time.
EARLY = timedelta(milliseconds=50)
SWEEP_BATCH = 500

log = get_logger("eventdesk.notify")


@dataclass(frozen=True)
class Claim:
    """A delivery taken by one worker for one attempt: everything the POST needs."""

    delivery_id: int
    token: str
    url: str
    host: str
    message_id: str
    body: bytes
    secrets: list[str]
    hub_signature: bool
    number: int  # this attempt's number (attempts so far, this one included)
    tried: int  # attempts of the current schedule, this one included


def deliver(
    delivery_id: int, policy: rules.Policy, *, database_url: str | None = None,
    resolve: Resolver = system_resolver,
) -> str | None:
    """One attempt of a delivery, if it is due: claim, POST, record. Returns the new status."""
    draw = random.random
    with session_scope(database_url) as session:
        taken = claim(session, delivery_id, _now(), policy, draw())
    if taken is None:
        return None
    timestamp = int(time.time())
    headers = signing.headers(taken.secrets, taken.message_id, timestamp, taken.body,
                              hub=taken.hub_signature)
    result = post(taken.url, taken.body, headers, connect_timeout=policy.connect_timeout,
                  read_timeout=policy.read_timeout, allow=policy.allow, resolve=resolve)
    with session_scope(database_url) as session:
        return record(session, taken, result, now=_now(), policy=policy, draw=draw())


def _now() -> datetime:
    return datetime.now(UTC)


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def is_disabled(session: Session, account_id: str, url: str) -> bool:
    return session.scalar(select(NotifyDisabledUrl.id).where(
        NotifyDisabledUrl.account_id == account_id, NotifyDisabledUrl.url_hash == url_hash(url)
    )) is not None


def claim(
    session: Session, delivery_id: int, now: datetime, policy: rules.Policy, draw: float
) -> Claim | None:
    """Take a pending, due delivery for one attempt; None if there is nothing to do now.

    Statements write before they read: on SQLite, a transaction that read first may not write
    after another connection has.
    """
    token = secrets.token_hex(16)
    lease_until = now + timedelta(seconds=policy.lease)
    taken = session.execute(
        update(ND)
        .where(ND.id == delivery_id, ND.status == "pending",
               or_(ND.next_attempt_at.is_(None), ND.next_attempt_at <= now + EARLY))
        .values(status="sending", lease_token=token, lease_until=lease_until, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        # Not pending, or not due by this clock: drop the sweeper's mark, so that it queues the
        # delivery again when due instead of after notify_requeue_seconds.
        session.execute(
            update(ND)
            .where(ND.id == delivery_id, ND.status == "pending", ND.lease_until.is_not(None))
            .values(lease_until=None)
            .execution_options(synchronize_session=False)
        )
        return None
    delivery = session.get(ND, delivery_id, populate_existing=True)
    assert delivery is not None
    if is_disabled(session, delivery.account_id, delivery.url):
        _finish(session, delivery, "disabled", now, "the notify URL is disabled (410 Gone)")
        return None
    host = rules.host_key(delivery.url)
    if slots.acquire(session, host, token, now=now, until=lease_until,
                     limit=policy.host_concurrency) is None:
        # The receiver has its fill of POSTs in flight: back off without spending an attempt.
        delivery.status, delivery.lease_token, delivery.lease_until = "pending", None, None
        delivery.next_attempt_at = now + timedelta(seconds=policy.sweep_interval * (1 + draw))
        return None
    delivery.attempts += 1
    delivery.host = host
    account = session.get(Account, delivery.account_id)
    return Claim(
        delivery_id=delivery.id, token=token, url=delivery.url, host=host,
        message_id=delivery.message_id, body=payload_bytes(delivery.payload),
        secrets=list(account.signing_secrets) if account else [],
        hub_signature=bool(account and account.notify_hub_signature),
        number=delivery.attempts, tried=delivery.attempts - delivery.schedule_offset,
    )


def payload_bytes(payload: dict[str, object]) -> bytes:
    """The body as sent: compact JSON, the same bytes on every attempt."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def record(
    session: Session, claim: Claim, result: AttemptResult, *, now: datetime,
    policy: rules.Policy, draw: float,
) -> str | None:
    """Store the attempt and move the delivery on; returns its new status (None: lease lost)."""
    verdict = rules.classify(result.status_code, result.error, result.retry_after, now)
    next_attempt_at: datetime | None = None
    if verdict.kind == "delivered":
        status = "delivered"
    elif verdict.kind == "failed":
        status = "failed"
    elif verdict.kind == "disable":
        status = "disabled"
    else:
        delay = rules.next_delay(
            policy.schedule, claim.tried, jitter=policy.jitter, draw=draw,
            retry_after=verdict.retry_after, retry_after_max=policy.retry_after_max,
        )
        status = "dead" if delay is None else "pending"
        if delay is not None:
            next_attempt_at = now + timedelta(seconds=delay)
    ours = and_(ND.status == "sending", ND.lease_token == claim.token)
    if status == "delivered":  # even if the sweeper took it back meanwhile: it has arrived
        ours = or_(ours, ND.status == "pending")
    moved = session.execute(
        update(ND).where(ND.id == claim.delivery_id, ours)
        .values(status=status, next_attempt_at=next_attempt_at, lease_token=None,
                lease_until=None, updated_at=now, last_error=_error_text(result),
                completed_at=now if status in rules.FINAL else None)
        .execution_options(synchronize_session=False)
    ).rowcount == 1  # type: ignore[attr-defined]
    session.add(NotificationAttempt(
        delivery_id=claim.delivery_id, number=claim.number, attempted_at=result.started_at,
        status_code=result.status_code, error=result.error, response=result.response,
        duration_ms=result.duration_ms, verdict=verdict.kind, address=result.address,
    ))
    slots.release(session, claim.host, claim.token)
    if verdict.kind == "disable":
        _disable_url(session, claim, result.status_code, now)
    _observe(session, claim, result, verdict.kind, status if moved else None)
    return status if moved else None


def _error_text(result: AttemptResult) -> str | None:
    if result.error:
        return f"{result.error}: {result.detail}"[:255] if result.detail else result.error
    if result.status_code is not None and not 200 <= result.status_code < 300:
        return f"HTTP {result.status_code}"
    return None


def _disable_url(session: Session, claim: Claim, status_code: int | None, now: datetime) -> None:
    account_id = session.scalar(select(ND.account_id).where(ND.id == claim.delivery_id))
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(NotifyDisabledUrl)
        .values(account_id=account_id, url_hash=url_hash(claim.url), url=claim.url,
                status_code=status_code, delivery_id=claim.delivery_id, disabled_at=now)
        .on_conflict_do_nothing(index_elements=["account_id", "url_hash"])
    )


def _finish(
    session: Session, delivery: NotificationDelivery, status: str, now: datetime, error: str
) -> None:
    delivery.status, delivery.last_error = status, error
    delivery.lease_token = delivery.lease_until = delivery.next_attempt_at = None
    delivery.completed_at = delivery.updated_at = now
    after_commit(session, lambda: _count_final(status))


def _count_final(status: str) -> None:
    metrics.notifications.labels(status).inc()


def _observe(
    session: Session, claim: Claim, result: AttemptResult, verdict: str, status: str | None
) -> None:
    def observe() -> None:
        metrics.notification_attempts.labels(
            "success" if verdict == "delivered" else "failure").inc()
        if status in rules.FINAL:
            _count_final(status)
        log.info("notify attempt", delivery_id=claim.delivery_id, attempt=claim.number,
                 host=claim.host, status_code=result.status_code, error=result.error,
                 verdict=verdict, state=status or "lease lost", duration_ms=result.duration_ms)

    after_commit(session, observe)


def sweep(
    session: Session, now: datetime, policy: rules.Policy, draw: Callable[[], float]
) -> list[int]:
    """Take back deliveries whose worker died; mark and return the ids of those due to be queued.

    The caller publishes ``notify.deliver`` for each id after the commit. A queued delivery is
    marked (``lease_until`` = now + requeue) so the next sweeps do not queue it again while its
    message waits in a long queue; if that message is lost, it is queued again once the mark
    passes.
    """
    lost = session.execute(
        update(ND)
        .where(ND.status == "sending", ND.lease_until < now)
        .values(status="pending", lease_token=None, lease_until=None, updated_at=now)
        .returning(ND.id, ND.attempts, ND.schedule_offset)
        .execution_options(synchronize_session=False)
    ).all()
    for delivery_id, attempts, offset in lost:
        delay = rules.next_delay(policy.schedule, attempts - offset, jitter=policy.jitter,
                                 draw=draw())
        session.add(NotificationAttempt(
            delivery_id=delivery_id, number=attempts, attempted_at=now, duration_ms=0,
            error="LeaseExpired", verdict="retry",
        ))
        if delay is None:
            session.execute(update(ND).where(ND.id == delivery_id).values(
                status="dead", next_attempt_at=None, completed_at=now,
                last_error="LeaseExpired: the worker did not finish the attempt",
            ).execution_options(synchronize_session=False))
            after_commit(session, lambda: _count_final("dead"))
        else:
            session.execute(update(ND).where(ND.id == delivery_id).values(
                next_attempt_at=now + timedelta(seconds=delay),
                last_error="LeaseExpired: the worker did not finish the attempt",
            ).execution_options(synchronize_session=False))
    waiting = and_(ND.status == "pending", ND.next_attempt_at <= now,
                   or_(ND.lease_until.is_(None), ND.lease_until <= now))
    due = select(ND.id).where(waiting).order_by(ND.next_attempt_at).limit(SWEEP_BATCH)
    # The conditions again on the outer UPDATE: PostgreSQL re-checks those, not the subquery's,
    # on a row another transaction changed meanwhile.
    queued = session.execute(
        update(ND).where(ND.id.in_(due.scalar_subquery()), waiting)
        .values(lease_until=now + timedelta(seconds=policy.requeue))
        .returning(ND.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    if lost:
        log.warning("notify leases expired", count=len(lost))
    return list(queued)


REDELIVER_MISSING = "missing"
REDELIVER_BUSY = "busy"


@dataclass(frozen=True)
class Replay:
    delivery_id: int
    message_id: str


def redeliver(session: Session, account_id: str, transid: str, now: datetime) -> Replay | str:
    """Start a finished delivery over: same webhook-id, a fresh schedule.

    Or :data:`REDELIVER_MISSING` (no notification for that transaction in this account) or
    :data:`REDELIVER_BUSY` (it is pending or being sent). Replaying a delivery whose URL was
    disabled by a 410 enables the URL again: asking for it is the operator saying it is back.
    The caller queues ``notify.deliver`` after the commit (else the sweeper does: it is due).
    """
    started = session.execute(
        update(ND)
        .where(ND.transid == transid, ND.account_id == account_id,
               ND.status.in_(rules.REPLAYABLE))
        .values(status="pending", next_attempt_at=now, schedule_offset=ND.attempts,
                lease_token=None, lease_until=None, completed_at=None, last_error=None,
                updated_at=now)
        .returning(ND.id, ND.url, ND.message_id)
        .execution_options(synchronize_session=False)
    ).first()
    if started is None:
        exists = session.scalar(
            select(ND.id).where(ND.transid == transid, ND.account_id == account_id)
        )
        return REDELIVER_MISSING if exists is None else REDELIVER_BUSY
    delivery_id, url, message_id = started
    session.execute(delete(NotifyDisabledUrl).where(
        NotifyDisabledUrl.account_id == account_id, NotifyDisabledUrl.url_hash == url_hash(url)
    ))
    return Replay(int(delivery_id), str(message_id))
