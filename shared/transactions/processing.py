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

No ORM objects on the way (they cost more CPU than the work itself): rows are plain values,
written set-based. On PostgreSQL each table gets one statement over a JSON array of its rows
(``json_populate_recordset``); new requests' ids come back with their match keys (``RETURNING``),
as a run creates at most one request a key. SQLite, the embedded default and not the throughput
target, takes the same rows as executemany.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import Select, TextClause, insert, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from shared import observe
from shared.codes import Code
from shared.db.models import EventDefinition, Note, NotificationDelivery, Request, Transaction
from shared.notify.payload import new_delivery
from shared.records.directory import Directory, PersonRef, Scope
from shared.requests.defaults import Draft, build_draft
from shared.requests.fields import FieldErrors, check_fields
from shared.requests.matching import (
    CLOSED_STATUSES,
    UPDATABLE,
    WINDOW,
    MatchKind,
    adds_note,
    changes,
    match_key,
    match_reason,
    note_hash,
)
from shared.requests.shaping import Shaping, shaping_of
from shared.transactions.failures import failure_code, reason
from shared.transactions.schemas import EventBatch, QueuedEvent


class EventFailed(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Request:
    """A request events of this run apply to: an open one found, or one this run creates."""

    id: int | None
    # The updatable columns as this run leaves them. For a created request, its row to insert.
    current: dict[str, Any]
    created: bool = False
    notes: set[str] = field(default_factory=set)  # its notes' text hashes, this run's too
    changed: dict[str, Any] = field(default_factory=dict)  # of an existing request
    touched: bool = False  # an existing request this run changed or added a note to


@dataclass
class _Work:
    batch: EventBatch
    event: QueuedEvent
    expired: bool = False
    draft: Draft | None = None
    kind: MatchKind | None = None
    key: str | None = None
    failure: EventFailed | None = None
    request: _Request | None = None
    outcome: dict[str, Any] | None = None
    status: str = "processing"

    @property
    def notifyurl(self) -> str | None:
        """The body's notify URL, else the event's default (resolved by the intake)."""
        return self.batch.notifyurl or self.event.notifyurl

    def end(self) -> None:
        """Settle the final status and outcome, once the request ids are known."""
        if self.expired:
            self.status = "expired"
        elif self.failure is not None:
            self.status = "failed"
        else:
            assert self.request is not None
            assert self.outcome is not None
            self.status = "completed"
            self.outcome = {**self.outcome, "request_id": self.request.id}

    def finished_row(self, now: datetime) -> dict[str, Any]:
        row: dict[str, Any] = {"transid": self.event.transid, "status": self.status,
                               "completed_at": now}
        # Left out rather than None: SQLite would store a JSON null, not NULL, for the outcome.
        if self.status == "completed":
            row["outcome"] = self.outcome
        if self.failure is not None:
            row["error"] = str(self.failure)
        return row


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _json(rows: list[dict[str, Any]]) -> str:
    # An aware datetime's isoformat costs about a microsecond and most rows share theirs (the
    # run's ``now``, a batch's received_at): each is rendered once. Equal instants may share
    # one text, as they are one timestamptz.
    rendered: dict[datetime, str] = {}

    def value(item: object) -> str:
        # Naive datetimes are refused, as the UTC columns refuse them.
        if not isinstance(item, datetime) or item.tzinfo is None:
            raise TypeError(f"no JSON form for {item!r}")
        text = rendered.get(item)
        if text is None:
            text = rendered[item] = item.isoformat()
        return text

    return json.dumps(rows, default=value, separators=(",", ":"))


def _pg_insert(table: str, columns: Iterable[str], tail: str = "") -> TextClause:
    """``INSERT`` of the rows given as the JSON array ``:rows``, in one statement."""
    names = ", ".join(f'"{name}"' for name in columns)
    # The table and column names are ours; the values are the parameter.
    return text(
        f"INSERT INTO {table} ({names}) SELECT {names} FROM json_populate_recordset("  # noqa: S608
        f"CAST(NULL AS {table}), CAST(:rows AS json)) {tail}"
    )


def _insert(
    session: Session, model: type[Request | Note | NotificationDelivery],
    rows: list[dict[str, Any]], returning: tuple[str, ...] = (),
) -> list[tuple[Any, ...]]:
    """Insert the rows (all with the same keys); returns the ``returning`` columns of each."""
    if _is_postgres(session):
        tail = f"RETURNING {', '.join(returning)}" if returning else ""
        result = session.execute(
            _pg_insert(model.__tablename__, rows[0], tail), {"rows": _json(rows)}
        )
    elif returning:
        result = session.execute(insert(model).returning(
            *(getattr(model, name) for name in returning), sort_by_parameter_order=True
        ), rows)
    else:
        result = session.execute(insert(model), rows)
    return [tuple(row) for row in result] if returning else []


_PG_FINISH = text(
    "UPDATE transactions AS t SET status = r.status, outcome = r.outcome, error = r.error, "
    "completed_at = r.completed_at FROM json_populate_recordset(CAST(NULL AS transactions), "
    "CAST(:rows AS json)) AS r WHERE t.transid = r.transid"
)


# The event parameters travel as JSON text inside the JSON: de-escaped, a \u0000 in a value
# would fail the statement, and the claim must not fail (a failed batch is recorded through it).
PG_CLAIM = text(
    "INSERT INTO transactions (transid, channel, account_id, key_id, evtid, correlationid, "
    "parameters, notifyurl, expiry, received_at, status, created_at) "
    "SELECT transid, channel, account_id, key_id, evtid, correlationid, "
    "CAST(parameters AS json), notifyurl, expiry, received_at, status, created_at "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(transid text, channel text, "
    "account_id text, key_id bigint, evtid text, correlationid text, parameters text, "
    "notifyurl text, expiry timestamptz, received_at timestamptz, status text, "
    "created_at timestamptz) "
    "ON CONFLICT (transid) DO NOTHING RETURNING transid"
)


def _claim(session: Session, batches: Sequence[EventBatch], now: datetime) -> set[str]:
    """Insert the transaction rows; returns the transids this run owns."""
    postgres = _is_postgres(session)
    rows = [
        {
            "transid": event.transid, "channel": batch.channel, "account_id": batch.account_id,
            "key_id": batch.key_id, "evtid": event.evtid, "correlationid": event.correlationid,
            "parameters": json.dumps(event.parameters) if postgres else event.parameters,
            "notifyurl": batch.notifyurl or event.notifyurl, "expiry": batch.expiry,
            "received_at": batch.received_at, "status": "processing", "created_at": now,
        }
        for batch in batches for event in batch.events
    ]
    if postgres:
        return set(session.scalars(PG_CLAIM, {"rows": _json(rows)}))
    # Rows as parameters (executemany), not .values(rows): the statement stays the same for
    # every batch, so it is compiled once.
    return set(session.scalars(
        sqlite.insert(Transaction)
        .on_conflict_do_nothing(index_elements=["transid"])
        .returning(Transaction.transid),
        rows,
    ))


def _owned_work(batches: Sequence[EventBatch], owned: set[str]) -> list[_Work]:
    work = []
    left = set(owned)
    for batch in batches:
        for event in batch.events:
            if event.transid in left:
                left.discard(event.transid)  # given twice in the run: acted on once
                work.append(_Work(batch, event))
    return work


class _Context:
    """Per-run caches: event definitions, account scopes, senders."""

    def __init__(self, session: Session, directory: Directory) -> None:
        self.session = session
        self.directory = directory
        self._definitions: dict[tuple[str, str], Shaping | EventFailed] = {}
        self._scopes: dict[str, Scope] = {}

    def definition(self, account_id: str, evtid: str) -> Shaping:
        """The definition's rules; raises EventFailed when it is gone or cannot work."""
        key = (account_id, evtid)
        if key not in self._definitions:
            row = self.session.scalars(select(EventDefinition).where(
                EventDefinition.account_id == account_id, EventDefinition.evtid == evtid,
            )).first()
            try:
                self._definitions[key] = shaping_of(row) if row is not None else EventFailed(
                    Code.INVALID_VALUES, f"event definition {evtid!r} is gone")
            except ValueError as exc:
                self._definitions[key] = EventFailed(
                    Code.INVALID_VALUES, f"event definition {evtid!r}: {exc}")
        found = self._definitions[key]
        if isinstance(found, EventFailed):
            raise found
        return found

    def scope(self, account_id: str) -> Scope:
        scope = self._scopes.get(account_id)
        if scope is None:
            try:
                scope = self._scopes[account_id] = Scope(self.session, self.directory, account_id)
            except LookupError as exc:
                raise EventFailed(Code.INVALID_VALUES, str(exc)) from exc
        return scope

    def sender(self, scope: Scope, batch: EventBatch) -> PersonRef | None:
        person_id = batch.sender_id
        if person_id is None and batch.key_id is not None:
            person_id = scope.home.key_people.get(batch.key_id)
        return scope.by_id("people", person_id) if person_id is not None else None


def _fields(context: _Context, work: _Work) -> dict[str, str | None]:
    batch, event = work.batch, work.event
    try:
        if batch.channel == "webex":
            shaping = context.definition(batch.account_id, event.evtid or "")
            return check_fields(shaping.fields(event.parameters))
        return check_fields(event.parameters)
    except FieldErrors as exc:
        raise EventFailed(Code.INVALID_VALUES, str(exc)) from exc


def _prepare(context: _Context, work: _Work) -> None:
    fields = _fields(context, work)
    scope = context.scope(work.batch.account_id)
    work.draft = build_draft(
        fields, scope, context.sender(scope, work.batch), work.batch.channel,
        subject_fallback=work.event.evtid or "Event", mail=work.event.mail,
    )
    work.kind, work.key = match_key(work.draft)


def _live(context: _Context, work: list[_Work], now: datetime) -> list[_Work]:
    """The events to match, drafted; the expired and the failing ones are marked so."""
    live: list[_Work] = []
    for item in work:
        if item.batch.expiry is not None and now > item.batch.expiry:
            item.expired = True
            continue
        try:
            _prepare(context, item)
        except EventFailed as exc:
            item.failure = exc
            continue
        live.append(item)
    return live


def _lock_keys(session: Session, keys: set[str]) -> None:
    if not keys or not _is_postgres(session):
        return
    # 64-bit lock ids from the (already random) hex digests, taken in a fixed order.
    ids = sorted({int(key[:15], 16) for key in keys})
    session.execute(
        text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:ids AS bigint[])) AS k"),
        {"ids": ids},
    )


def open_requests_query(accounts: set[str], keys: set[str], now: datetime) -> Select[Any]:
    """The open requests created within the window on any of the keys, newest first.

    A key already names its account; the accounts are there for the index, which leads with
    them (ix_requests_match): without them a full database is read from end to end.
    """
    return (
        select(Request.id, Request.match_key, *(getattr(Request, name) for name in UPDATABLE))
        .where(
            Request.account_id.in_(accounts),
            Request.match_key.in_(keys),
            Request.status.not_in(CLOSED_STATUSES),
            Request.created_at >= now - WINDOW,
        ).order_by(Request.created_at.desc(), Request.id.desc())
    )


def _open_requests(
    session: Session, accounts: set[str], keys: set[str], now: datetime
) -> dict[str, _Request]:
    """For each match key, the newest open request created within the window."""
    if not keys:
        return {}
    found: dict[str, _Request] = {}
    candidates = session.execute(open_requests_query(accounts, keys, now))
    for request_id, key, *values in candidates:
        if key is not None and key not in found:
            found[key] = _Request(request_id, dict(zip(UPDATABLE, values, strict=True)))
    if not found:
        return found
    by_id = {request.id: request for request in found.values()}
    for request_id, digest in session.execute(
        select(Note.request_id, Note.text_hash).where(Note.request_id.in_(by_id))
    ):
        by_id[request_id].notes.add(digest)
    return found


def _new_request(draft: Draft, key: str, now: datetime) -> _Request:
    row = {
        "account_id": draft.account_id, "match_key": key, "created_at": now, "updated_at": now,
        "references": {"unresolved": draft.unresolved} if draft.unresolved else {},
        **draft.request_values(),
    }
    return _Request(None, row, created=True)


# A note to insert: its request, text, text hash, internal or not, and transid.
_NewNote = tuple[_Request, str, str, bool, str]


def _write(
    session: Session, requests: list[_Request], new_notes: list[_NewNote], now: datetime
) -> None:
    """Insert the created requests and the new notes, update the changed requests."""
    created = {request.current["match_key"]: request for request in requests if request.created}
    if created:  # one created request a match key
        rows = [request.current for request in created.values()]
        for request_id, key in _insert(session, Request, rows, ("id", "match_key")):
            created[key].id = request_id
    touched = [{"id": request.id, **request.changed, "updated_at": now}
               for request in requests if request.touched]
    if touched:  # by primary key, grouped by the set of columns changed
        session.execute(update(Request), touched)
    notes = [
        {"request_id": request.id, "text": body, "text_hash": digest, "internal": internal,
         "transid": transid, "created_at": now}
        for request, body, digest, internal, transid in new_notes
    ]
    if notes:
        _insert(session, Note, notes)


def _finish(session: Session, work: list[_Work], now: datetime) -> list[int]:
    """End the transaction rows, insert their deliveries; returns the delivery ids."""
    for item in work:
        item.end()
    rows = [item.finished_row(now) for item in work]
    if rows and _is_postgres(session):
        session.execute(_PG_FINISH, {"rows": _json(rows)})
    elif rows:
        session.execute(update(Transaction), rows)
    deliveries = [
        new_delivery(
            transid=item.event.transid, account_id=item.batch.account_id,
            correlationid=item.event.correlationid, evtid=item.event.evtid, status=item.status,
            outcome=item.outcome, url=item.notifyurl,
            failure=item.failure.code if item.failure else None, now=now,
        )
        for item in work if item.notifyurl
    ]
    ids = [id_ for id_, in _insert(session, NotificationDelivery, deliveries, ("id",))
           ] if deliveries else []
    # The work is in batch order, so each batch's events are together.
    for _, items in groupby(work, key=lambda item: id(item.batch)):
        done = list(items)
        observe.processed(session, done[0].batch.channel, done[0].batch.received_at,
                          [(item.event.transid, item.status, item.outcome) for item in done])
    return ids


def process_batches(
    session: Session, batches: Sequence[EventBatch], now: datetime, directory: Directory
) -> list[int]:
    """Act on every event of the batches not yet processed. Returns delivery ids to queue."""
    owned = _claim(session, batches, now)
    if not owned:
        return []
    work = _owned_work(batches, owned)
    live = _live(_Context(session, directory), work, now)
    keys = {item.key for item in live if item.key}
    _lock_keys(session, keys)
    accounts = {item.draft.account_id for item in live if item.key and item.draft}
    requests = _open_requests(session, accounts, keys, now)
    new_notes: list[_NewNote] = []
    for item in live:
        _apply(item, requests, new_notes, now)
    _write(session, list(requests.values()), new_notes, now)
    return _finish(session, work, now)


def _apply(
    item: _Work, requests: dict[str, _Request], new_notes: list[_NewNote], now: datetime,
) -> None:
    """Create or update the request for one event, and say which in ``item.outcome``."""
    draft, key, kind = item.draft, item.key, item.kind
    assert draft is not None
    assert key is not None
    assert kind is not None
    unresolved = {"unresolved": draft.unresolved} if draft.unresolved else {}
    request = requests.get(key)
    if request is None:
        request = item.request = requests[key] = _new_request(draft, key, now)
        for body, internal in ((draft.note, False), (draft.internal_note, True)):
            if body:
                digest = note_hash(body)
                request.notes.add(digest)
                new_notes.append((request, body, digest, internal, item.event.transid))
        item.outcome = {"action": "created", **unresolved}
        return
    item.request = request
    changed = changes(draft, request.current)
    added_note = False
    for body, internal in ((draft.note, False), (draft.internal_note, True)):
        if not body:
            continue
        digest = note_hash(body)
        if not adds_note(draft, kind, digest, request.notes):
            continue
        request.notes.add(digest)
        new_notes.append((request, body, digest, internal, item.event.transid))
        added_note = True
    request.current.update(changed)
    if not request.created and (changed or added_note):
        request.changed.update(changed)
        request.touched = True
    action = "updated" if changed or added_note else "unchanged"
    item.outcome = {"action": action, "match": kind, "reason": match_reason(draft, kind),
                    **unresolved}


def _storable(text: str) -> str:
    # PostgreSQL text holds no NUL, and a lone surrogate cannot be encoded at all.
    return text.replace("\x00", "").encode("utf-8", "replace").decode()


def _recordable(batch: EventBatch) -> EventBatch:
    """The batch with its text made storable whatever it holds, cut to its columns' lengths."""
    def text(value: str | None, limit: int | None = None) -> str | None:
        return None if value is None else _storable(value)[:limit]

    events = [event.model_copy(update={
        "evtid": text(event.evtid, Transaction.evtid.type.length),
        "correlationid": text(event.correlationid, Transaction.correlationid.type.length),
        "parameters": {_storable(name): text(value) for name, value in event.parameters.items()},
        "notifyurl": text(event.notifyurl),
    }) for event in batch.events]
    return batch.model_copy(update={"notifyurl": text(batch.notifyurl), "events": events})


def record_failure(
    session: Session, batch: EventBatch, error: BaseException, now: datetime
) -> list[int]:
    """End the batch's unprocessed events as ``failed`` by ``error``; returns delivery ids.

    Whatever made the events fail, their text cannot fail this too: it is stored sanitised
    (no NUL, no lone surrogate, no longer than its column), so a failure is recorded once.
    """
    batch = _recordable(batch)
    work = _owned_work([batch], _claim(session, [batch], now))
    failure = EventFailed(failure_code(error), _storable(reason(error)))
    for item in work:
        item.failure = failure
    return _finish(session, work, now)
