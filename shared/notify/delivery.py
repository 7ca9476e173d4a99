"""The delivery state machine in the database (states and rules: ``shared/notify/rules.py``).

Deliveries go in batches (the driver: ``shared/notify/stream.py``), and one attempt is three
steps; no database transaction is open while a POST is awaited:

1. :func:`claim`, a short transaction for a whole batch: one compare-and-set statement takes
   every ``pending`` and due delivery of the batch -> ``sending`` with a lease (``lease_token``,
   ``lease_until``), then slots of each receiver's host (at most
   ``EVENTDESK_NOTIFY_HOST_CONCURRENCY`` POSTs in flight per host, across workers): as many as
   the batch has deliveries for the host, or as are free, besides those the claimer holds
   already (renewed); a host with none is deferred without spending an attempt, and found by
   the claimer that holds its slots (:func:`claim_due`). Commit.
2. The POSTs (``shared/notify/http.py``), concurrent, each bounded by its timeouts and a deadline
   shorter than the lease.
3. :func:`record`, a short transaction for the outcomes that came back meanwhile: the attempt
   rows, and each delivery's next state, set only if the lease is still ours (compare-and-set on
   ``lease_token``); a host's slots are freed once the claimer has no claim of it left. A
   claim that waited too long to be POSTed within its lease is given back (:func:`give_back`).

Retries are scheduled by the database alone: a failed attempt sets ``next_attempt_at``, and the
sweeper (:func:`sweep`, every ``EVENTDESK_NOTIFY_SWEEP_INTERVAL_SECONDS``) publishes
``notify.deliver`` for the deliveries that are due, and takes back any delivery whose worker died
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
import secrets
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from shared import metrics
from shared.db import dialect
from shared.db.models import Account, NotificationAttempt, NotificationDelivery, NotifyDisabledUrl
from shared.logs import get_logger
from shared.notify import rules, slots
from shared.notify.http import AttemptResult
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
    token: str  # the lease: the claimed batch's, which also holds the batch's host slots
    url: str
    host: str
    message_id: str
    body: bytes
    secrets: list[str]
    hub_signature: bool
    number: int  # this attempt's number (attempts so far, this one included)
    tried: int  # attempts of the current schedule, this one included


@dataclass(frozen=True)
class Batch:
    """What :func:`claim` took: the claims, and for each host how many POSTs may be in flight
    (the slots held) and under which holder token."""

    claims: list[Claim] = field(default_factory=list)
    lanes: dict[str, int] = field(default_factory=dict)
    holders: dict[str, str] = field(default_factory=dict)
    # Due, but their host had no free slot: pending again, due again after a short wait; by host.
    deferred: dict[str, list[int]] = field(default_factory=dict)


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def claim(
    session: Session, delivery_ids: Collection[int], now: datetime, policy: rules.Policy,
    draw: float, *, held: Mapping[str, str] | None = None,
) -> Batch:
    """Take the pending, due deliveries among ``delivery_ids`` for one attempt each.

    ``held``: the hosts whose slots the caller holds already, each with its holder token (a
    stream that is still POSTing to them). Their slots are renewed with the new lease and
    topped up from the free ones, and their deliveries are never deferred: the caller's lanes
    take them after those in hand.

    Statements write before they read: on SQLite, a transaction that read first may not write
    after another connection has.
    """
    token = secrets.token_hex(16)
    lease_until = now + timedelta(seconds=policy.lease)
    taken = session.execute(
        update(ND)
        .where(ND.id.in_(delivery_ids), ND.status == "pending",
               or_(ND.next_attempt_at.is_(None), ND.next_attempt_at <= now + EARLY))
        # The attempt is counted here, in the one row version a claim writes; taken back below
        # where it is not made (a disabled URL, no free slot).
        .values(status="sending", lease_token=token, lease_until=lease_until, updated_at=now,
                attempts=ND.attempts + 1)
        .returning(ND.id, ND.account_id, ND.url, ND.host, ND.message_id, ND.payload,
                   ND.attempts, ND.schedule_offset)
        .execution_options(synchronize_session=False)
    ).all()
    missed = set(delivery_ids) - {row.id for row in taken}
    if missed:
        # Not pending, or not due by this clock: drop the sweeper's mark, so that it queues them
        # again when due instead of after notify_requeue_seconds.
        session.execute(
            update(ND)
            .where(ND.id.in_(missed), ND.status == "pending", ND.lease_until.is_not(None))
            .values(lease_until=None)
            .execution_options(synchronize_session=False)
        )
    if not taken:
        return Batch()
    disabled = _disabled_among(session, {(row.account_id, url_hash(row.url)) for row in taken})
    off = [row.id for row in taken if (row.account_id, url_hash(row.url)) in disabled]
    if off:
        _finish(session, off, "disabled", now, "the notify URL is disabled (410 Gone)")
    by_host: dict[str, list[Any]] = defaultdict(list)
    for row in taken:
        if (row.account_id, url_hash(row.url)) not in disabled:
            by_host[rules.host_key(row.url)].append(row)
    accounts = {account.id: account for account in session.scalars(
        select(Account).where(Account.id.in_({row.account_id for row in taken})))}
    batch = Batch()
    held = held or {}
    for host, rows in by_host.items():
        ids = [row.id for row in rows]
        holder = held.get(host, token)
        lanes = slots.renew(session, host, holder, until=lease_until) if host in held else 0
        wanted = min(len(rows), policy.host_concurrency) - lanes
        if wanted > 0:
            lanes += slots.acquire(session, host, holder, now=now, until=lease_until,
                                   limit=policy.host_concurrency, wanted=wanted)
        if not lanes:
            # The receiver has its fill of POSTs in flight: back off without spending an attempt.
            # The host is noted, so that the stream holding its slots finds them (claim_due).
            session.execute(update(ND).where(ND.id.in_(ids)).values(
                status="pending", lease_token=None, lease_until=None, host=host,
                attempts=ND.attempts - 1,
                next_attempt_at=now + timedelta(seconds=rules.busy_wait(draw)),
            ).execution_options(synchronize_session=False))
            batch.deferred[host] = ids
            continue
        unnamed = [row.id for row in rows if row.host != host]  # rows made before it was set
        if unnamed:
            session.execute(update(ND).where(ND.id.in_(unnamed)).values(host=host)
                            .execution_options(synchronize_session=False))
        batch.lanes[host] = lanes
        batch.holders[host] = holder
        for row in rows:
            account = accounts.get(row.account_id)
            batch.claims.append(Claim(
                delivery_id=row.id, token=token, url=row.url, host=host,
                message_id=row.message_id, body=payload_bytes(row.payload),
                secrets=list(account.signing_secrets) if account else [],
                hub_signature=bool(account and account.notify_hub_signature),
                number=row.attempts, tried=row.attempts - row.schedule_offset,
            ))
    return batch


def claim_due(
    session: Session, hosts: Collection[str], now: datetime, policy: rules.Policy, draw: float,
    *, limit: int, held: Mapping[str, str],
) -> Batch:
    """:func:`claim` the oldest due deliveries to ``hosts`` (up to ``limit``), whoever was asked
    to send them: those another worker deferred for want of a slot these hosts' holder has."""
    due = session.scalars(
        select(ND.id).where(ND.status == "pending", ND.host.in_(hosts),
                            or_(ND.next_attempt_at.is_(None), ND.next_attempt_at <= now + EARLY))
        .order_by(ND.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
    ).all()
    return claim(session, due, now, policy, draw, held=held) if due else Batch()


def give_back(session: Session, unsent: Iterable[Claim], now: datetime) -> None:
    """Claims never POSTed (their lease would have run out first): pending and due again, the
    attempt not spent; only where the lease is still theirs."""
    by_token: dict[str, list[int]] = defaultdict(list)
    for taken in unsent:
        by_token[taken.token].append(taken.delivery_id)
    for token, ids in by_token.items():
        session.execute(update(ND).where(
            ND.id.in_(ids), ND.status == "sending", ND.lease_token == token,
        ).values(status="pending", attempts=ND.attempts - 1, lease_token=None, lease_until=None,
                 next_attempt_at=now, updated_at=now).execution_options(synchronize_session=False))


def _disabled_among(session: Session, pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (account, URL hash) pairs are disabled: one query for a batch."""
    found = session.execute(select(NotifyDisabledUrl.account_id, NotifyDisabledUrl.url_hash).where(
        NotifyDisabledUrl.url_hash.in_({hashed for _, hashed in pairs})))
    return {(account, hashed) for account, hashed in found if (account, hashed) in pairs}


def payload_bytes(payload: dict[str, object]) -> bytes:
    """The body as sent: compact JSON, the same bytes on every attempt."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def record(
    session: Session, outcomes: Sequence[tuple[Claim, AttemptResult]], *, now: datetime,
    policy: rules.Policy, draw: Callable[[], float],
    release: Iterable[tuple[str, str]] | None = None,
) -> list[str | None]:
    """Store the attempts and move the deliveries on; returns their new statuses (None: lease
    lost). Frees the slots held by each (host, lease token) of ``release``; by default, those of
    every claim in ``outcomes``.

    A few statements for the whole batch, whatever its size: the attempts (written first, see
    :func:`claim`), the deliveries' rows locked and read, the updates of those still ours sent
    together (executemany), the slots.
    """
    verdicts = [rules.classify(result.status_code, result.error, result.retry_after, now)
                for _, result in outcomes]
    if outcomes:  # Core executemany, as the update below: no ORM bookkeeping a row
        session.connection().execute(insert(cast("Table", NotificationAttempt.__table__)), [{
            "delivery_id": claim.delivery_id, "number": claim.number,
            "attempted_at": result.started_at, "status_code": result.status_code,
            "error": result.error, "response": result.response,
            "duration_ms": result.duration_ms, "address": result.address,
            "verdict": verdict.kind,
        } for (claim, result), verdict in zip(outcomes, verdicts, strict=True)])
    held: dict[int, str] = {row[0]: row[1] for row in session.execute(
        select(ND.id, ND.status + ":" + func.coalesce(ND.lease_token, ""))
        .where(ND.id.in_([claim.delivery_id for claim, _ in outcomes]))
        .with_for_update()
    )} if outcomes else {}
    statuses: list[str | None] = []
    changes: list[dict[str, Any]] = []
    for (claim, result), verdict in zip(outcomes, verdicts, strict=True):
        status, next_attempt_at = _next_state(claim, verdict, now, policy, draw())
        state = held.get(claim.delivery_id)
        # Ours while the lease is; and a delivery that has arrived is delivered even if the
        # sweeper took it back meanwhile.
        moved = state == f"sending:{claim.token}" or (status == "delivered" and state == "pending:")
        statuses.append(status if moved else None)
        if moved:
            changes.append({
                "b_id": claim.delivery_id, "b_status": status, "b_next": next_attempt_at,
                "b_error": _error_text(result),
                "b_completed": now if status in rules.FINAL else None,
            })
        if verdict.kind == "disable":
            _disable_url(session, claim, result.status_code, now)
        _observe(session, claim, result, verdict.kind, status if moved else None)
    if changes:
        table = cast("Table", ND.__table__)
        session.connection().execute(
            update(table).where(table.c.id == bindparam("b_id"))
            .values(status=bindparam("b_status"), next_attempt_at=bindparam("b_next"),
                    last_error=bindparam("b_error"), completed_at=bindparam("b_completed"),
                    lease_token=None, lease_until=None, updated_at=now),
            changes,
        )
    freed = {(claim.host, claim.token) for claim, _ in outcomes} if release is None else release
    for host, token in freed:
        slots.release(session, host, token)
    return statuses


def _next_state(
    claim: Claim, verdict: rules.Verdict, now: datetime, policy: rules.Policy, draw: float
) -> tuple[str, datetime | None]:
    """The delivery's status after this attempt, and when the next one is due."""
    if verdict.kind == "delivered":
        return "delivered", None
    if verdict.kind == "failed":
        return "failed", None
    if verdict.kind == "disable":
        return "disabled", None
    delay = rules.next_delay(
        policy.schedule, claim.tried, jitter=policy.jitter, draw=draw,
        retry_after=verdict.retry_after, retry_after_max=policy.retry_after_max,
    )
    return ("dead", None) if delay is None else ("pending", now + timedelta(seconds=delay))


def _error_text(result: AttemptResult) -> str | None:
    if result.error:
        return f"{result.error}: {result.detail}"[:255] if result.detail else result.error
    if result.status_code is not None and not 200 <= result.status_code < 300:
        return f"HTTP {result.status_code}"
    return None


def _disable_url(session: Session, claim: Claim, status_code: int | None, now: datetime) -> None:
    account_id = session.scalar(select(ND.account_id).where(ND.id == claim.delivery_id))
    session.execute(
        dialect.insert(session, NotifyDisabledUrl)
        .values(account_id=account_id, url_hash=url_hash(claim.url), url=claim.url,
                status_code=status_code, delivery_id=claim.delivery_id, disabled_at=now)
        .on_conflict_do_nothing(index_elements=["account_id", "url_hash"])
    )


def _finish(
    session: Session, delivery_ids: list[int], status: str, now: datetime, error: str
) -> None:
    session.execute(update(ND).where(ND.id.in_(delivery_ids)).values(
        status=status, last_error=error, lease_token=None, lease_until=None, next_attempt_at=None,
        completed_at=now, updated_at=now, attempts=ND.attempts - 1,  # none was made
    ).execution_options(synchronize_session=False))
    after_commit(session, lambda: _count_final(status, len(delivery_ids)))


def _count_final(status: str, count: int = 1) -> None:
    metrics.notifications.labels(status).inc(count)


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
