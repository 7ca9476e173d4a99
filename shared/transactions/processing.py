"""Processing queued events: once each, in batches, with name resolution and event matching.

A worker hands over the batches of many messages at once; they are processed in one database
transaction with set-based statements, which is what lets one worker keep up with thousands of
events a second (DESIGN 2, "Throughput design").

Once, whatever the number of deliveries (DESIGN 4.5): the transaction rows are inserted first
with ``ON CONFLICT DO NOTHING``, and only the rows this run inserted are acted on; a message
delivered twice, or twice at once, finds its events taken. On PostgreSQL the second inserter
waits on the first one's row locks, then skips.

Matching under concurrency (DESIGN 4.4): before looking for a request to match, the run takes a
transaction-scoped advisory lock on every match key of the batch (sorted, so two runs never wait
on each other in a circle). The lock is held until commit, so a storm spread over many worker
processes finds, for each key, either nothing (and one run creates the request) or the request
that run committed. SQLite needs no lock: the claiming INSERT already made this run the only
writer until it commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import observe
from shared.db.models import EventDefinition, Note, Request, Transaction
from shared.intake.codes import Code
from shared.records.directory import Directory, PersonRef, Scope
from shared.requests.defaults import Draft, build_draft
from shared.requests.fields import FieldErrors, check_fields, event_fields
from shared.requests.matching import (
    CLOSED_STATUSES,
    REASONS,
    WINDOW,
    MatchKind,
    changes,
    match_key,
    note_hash,
)
from shared.transactions.schemas import EventBatch, QueuedEvent
from shared.transactions.service import new_delivery


class EventFailed(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Work:
    batch: EventBatch
    event: QueuedEvent
    row: Transaction
    draft: Draft | None = None
    kind: MatchKind | None = None
    key: str | None = None
    failure: EventFailed | None = None
    request: Request | None = None
    outcome: dict[str, Any] | None = None


def _claim(session: Session, batches: Sequence[EventBatch], now: datetime) -> set[str]:
    """Insert the transaction rows; returns the transids this run owns."""
    rows = [
        {
            "transid": event.transid, "channel": batch.channel, "account_id": batch.account_id,
            "key_id": batch.key_id, "evtid": event.evtid, "correlationid": event.correlationid,
            "parameters": event.parameters, "notifyurl": batch.notifyurl, "expiry": batch.expiry,
            "received_at": batch.received_at, "status": "processing", "created_at": now,
        }
        for batch in batches for event in batch.events
    ]
    insert = postgresql.insert if _is_postgres(session) else sqlite.insert
    # Rows as parameters (executemany), not .values(rows): the statement stays the same for
    # every batch, so it is compiled once and prepared by the driver instead of parsed anew.
    statement = (
        insert(Transaction)
        .on_conflict_do_nothing(index_elements=["transid"])
        .returning(Transaction.transid)
    )
    return set(session.scalars(statement, rows))


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


class _Context:
    """Per-run caches: event definitions, account scopes, senders."""

    def __init__(self, session: Session, directory: Directory) -> None:
        self.session = session
        self.directory = directory
        self._definitions: dict[tuple[str, str], EventDefinition | None] = {}
        self._scopes: dict[str, Scope] = {}

    def definition(self, account_id: str, evtid: str) -> EventDefinition | None:
        key = (account_id, evtid)
        if key not in self._definitions:
            self._definitions[key] = self.session.scalars(select(EventDefinition).where(
                EventDefinition.account_id == account_id, EventDefinition.evtid == evtid,
            )).first()
        return self._definitions[key]

    def scope(self, account_id: str) -> Scope:
        scope = self._scopes.get(account_id)
        if scope is None:
            try:
                scope = self._scopes[account_id] = Scope(self.session, self.directory, account_id)
            except LookupError as exc:
                raise EventFailed(Code.INVALID_VALUES, str(exc)) from exc
        return scope

    def sender(self, scope: Scope, key_id: int | None) -> PersonRef | None:
        person_id = scope.home.key_people.get(key_id) if key_id is not None else None
        return scope.by_id("people", person_id) if person_id is not None else None


def _fields(context: _Context, work: _Work) -> dict[str, str | None]:
    batch, event = work.batch, work.event
    try:
        if batch.channel == "webex":
            definition = context.definition(batch.account_id, event.evtid or "")
            if definition is None:
                raise EventFailed(Code.INVALID_VALUES,
                                  f"event definition {event.evtid!r} is gone")
            return check_fields(
                event_fields(event.parameters, definition.defaults, definition.mapping))
        return check_fields(event.parameters)
    except FieldErrors as exc:
        raise EventFailed(Code.INVALID_VALUES, str(exc)) from exc


def _prepare(context: _Context, work: _Work) -> None:
    fields = _fields(context, work)
    scope = context.scope(work.batch.account_id)
    work.draft = build_draft(
        fields, scope, context.sender(scope, work.batch.key_id), work.batch.channel,
        subject_fallback=work.event.evtid or "Event",
    )
    work.kind, work.key = match_key(work.draft)


def _lock_keys(session: Session, keys: set[str]) -> None:
    if not keys or not _is_postgres(session):
        return
    # 64-bit lock ids from the (already random) hex digests, taken in a fixed order.
    ids = sorted({int(key[:15], 16) for key in keys})
    session.execute(
        text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:ids AS bigint[])) AS k"),
        {"ids": ids},
    )


def _open_requests(
    session: Session, keys: set[str], now: datetime
) -> dict[str, Request]:
    """For each match key, the newest open request created within the window."""
    if not keys:
        return {}
    found: dict[str, Request] = {}
    candidates = session.scalars(
        select(Request).where(
            Request.match_key.in_(keys),
            Request.status.not_in(CLOSED_STATUSES),
            Request.created_at >= now - WINDOW,
        ).order_by(Request.created_at.desc(), Request.id.desc())
    )
    for request in candidates:
        if request.match_key is not None:
            found.setdefault(request.match_key, request)
    return found


def _note_hashes(session: Session, request_ids: set[int]) -> set[tuple[int, str]]:
    if not request_ids:
        return set()
    rows = session.execute(
        select(Note.request_id, Note.text_hash).where(Note.request_id.in_(request_ids))
    )
    return {(request_id, digest) for request_id, digest in rows}


def _new_request(draft: Draft, key: str, now: datetime) -> Request:
    return Request(
        account_id=draft.account_id, match_key=key, created_at=now, updated_at=now,
        references={"unresolved": draft.unresolved} if draft.unresolved else {},
        **draft.request_values(),
    )


def process_batches(
    session: Session, batches: Sequence[EventBatch], now: datetime, directory: Directory
) -> list[int]:
    """Act on every event of the batches not yet processed. Returns delivery ids to queue."""
    owned = _claim(session, batches, now)
    if not owned:
        return []
    rows = {row.transid: row for row in session.scalars(
        select(Transaction).where(Transaction.transid.in_(owned))
    )}
    context = _Context(session, directory)
    work = [_Work(batch, event, rows[event.transid])
            for batch in batches for event in batch.events if event.transid in owned]
    live: list[_Work] = []
    for item in work:
        if item.batch.expiry is not None and now > item.batch.expiry:
            item.row.status = "expired"
            continue
        try:
            _prepare(context, item)
        except EventFailed as exc:
            item.failure = exc
            continue
        live.append(item)

    keys = {item.key for item in live if item.key}
    _lock_keys(session, keys)
    open_requests = _open_requests(session, keys, now)
    notes = _note_hashes(session, {request.id for request in open_requests.values()})
    new_notes: list[tuple[Request, str, bool, str]] = []
    for item in live:
        _apply(item, open_requests, notes, new_notes, now)

    # Requests first (their ids), then the notes that point at them.
    session.add_all(item.request for item in live if item.request is not None)
    session.flush()
    session.add_all([
        Note(request_id=request.id, text=body, text_hash=note_hash(body), internal=internal,
             transid=transid, created_at=now)
        for request, body, internal, transid in new_notes
    ])
    for item in work:
        row = item.row
        if item.failure is not None:
            row.status, row.error = "failed", str(item.failure)
        elif row.status == "processing":
            assert item.request is not None
            assert item.outcome is not None
            row.status = "completed"
            row.outcome = {**item.outcome, "request_id": item.request.id}
        row.completed_at = now
    deliveries = [
        new_delivery(item.row, item.batch.notifyurl,
                     item.failure.code if item.failure else None, now)
        for item in work if item.batch.notifyurl
    ]
    session.add_all(deliveries)
    session.flush()
    for batch in batches:
        observe.processed(session, batch.channel, batch.received_at, [
            (item.row.transid, item.row.status, item.row.outcome)
            for item in work if item.batch is batch
        ])
    return [delivery.id for delivery in deliveries]


def _apply(
    item: _Work, open_requests: dict[str, Request], notes: set[tuple[int, str]],
    new_notes: list[tuple[Request, str, bool, str]], now: datetime,
) -> None:
    """Create or update the request for one event, and say which in ``item.outcome``."""
    draft, key, kind = item.draft, item.key, item.kind
    assert draft is not None
    assert key is not None
    assert kind is not None
    unresolved = {"unresolved": draft.unresolved} if draft.unresolved else {}
    request = open_requests.get(key)
    if request is None:
        request = item.request = open_requests[key] = _new_request(draft, key, now)
        for body, internal in ((draft.note, False), (draft.internal_note, True)):
            if body:
                new_notes.append((request, body, internal, item.event.transid))
        item.outcome = {"action": "created", **unresolved}
        return
    item.request = request
    changed = changes(draft, {column: getattr(request, column) for column in (
        "completion_reason", "desired_completion_at", "downtime_start_at", "downtime_end_at",
        "status", "waiting_until", "team_id", "member_id")})
    added_note = False
    for body, internal in ((draft.note, False), (draft.internal_note, True)):
        if not body:
            continue
        digest = note_hash(body)
        # Notes of a request created in this run are known from new_notes, not yet in `notes`.
        pending = any(r is request and note_hash(b) == digest for r, b, _, _ in new_notes)
        if pending or (request.id is not None and (request.id, digest) in notes):
            continue
        new_notes.append((request, body, internal, item.event.transid))
        added_note = True
    for column, value in changed.items():
        setattr(request, column, value)
    if changed or added_note:
        request.updated_at = now
    action = "updated" if changed or added_note else "unchanged"
    item.outcome = {"action": action, "match": kind, "reason": REASONS[kind], **unresolved}


def record_failure(session: Session, batch: EventBatch, error: str, now: datetime) -> list[int]:
    """End the batch's unprocessed events as ``failed`` with ``error``; returns delivery ids."""
    owned = _claim(session, [batch], now)
    rows = session.scalars(select(Transaction).where(Transaction.transid.in_(owned))).all()
    for row in rows:
        row.status, row.error, row.completed_at = "failed", error[:1000], now
    deliveries = [new_delivery(row, batch.notifyurl, Code.INTERNAL_ERROR, now)
                  for row in rows if batch.notifyurl]
    session.add_all(deliveries)
    session.flush()
    observe.processed(session, batch.channel, batch.received_at,
                      [(row.transid, row.status, row.outcome) for row in rows])
    return [delivery.id for delivery in deliveries]
