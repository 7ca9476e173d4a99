"""Processing queued events: once each, in batches, with name resolution and event matching;
and the worker's job around it, with its failure policy (shared/transactions/failures.py).

A worker hands over the batches of many messages at once; they are processed in one database
transaction with set-based statements (shared/transactions/store.py), which is what lets one
worker keep up with thousands of events a second (DESIGN 2, "Throughput design"). A run claims
the transaction rows first and acts only on those it inserted, so a message delivered twice, or
twice at once, finds its events taken (DESIGN 4.5). Mail's runs hold their events already (the
mail row, locked) and write each transaction row once, ended (:func:`process_held`).

Matching under concurrency (DESIGN 4.4): before looking for a request to match, the run locks
every match key of the batch until commit (``store.lock_match_keys``). The rules applied to one
event (:func:`_apply`) touch no database: they read and change this run's view of the requests,
which is written set-based at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from sqlalchemy.orm import Session

from shared import observe
from shared.codes import Code
from shared.db.engine import session_scope
from shared.logs import get_logger
from shared.notify.payload import new_delivery
from shared.records.directory import Directory, PersonRef, Scope
from shared.requests.defaults import Draft, build_draft
from shared.requests.fields import FieldErrors, check_fields
from shared.requests.matching import (
    UPDATABLE,
    MatchKind,
    adds_note,
    changes,
    match_key,
    match_reason,
    note_hash,
)
from shared.requests.shaping import Shaping, shaping_of
from shared.transactions import store
from shared.transactions.failures import Backoff, failure_code, process_isolating, reason
from shared.transactions.schemas import EventBatch, QueuedEvent

log = get_logger(__name__)


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
        return {"transid": self.event.transid, "status": self.status,
                "outcome": self.outcome if self.status == "completed" else None,
                "error": None if self.failure is None else str(self.failure),
                "completed_at": now}


def _transaction_row(batch: EventBatch, event: QueuedEvent, now: datetime) -> dict[str, Any]:
    """The event's transaction row as it is first written: claimed, ``processing``."""
    return {
        "transid": event.transid, "channel": batch.channel, "account_id": batch.account_id,
        "key_id": batch.key_id, "evtid": event.evtid, "correlationid": event.correlationid,
        "parameters": event.parameters, "notifyurl": batch.notifyurl or event.notifyurl,
        "expiry": batch.expiry, "received_at": batch.received_at, "status": "processing",
        "created_at": now,
    }


def _claim(session: Session, batches: Sequence[EventBatch], now: datetime) -> set[str]:
    """Insert the transaction rows; returns the transids this run owns."""
    return store.claim(session, [_transaction_row(batch, event, now)
                                 for batch in batches for event in batch.events])


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
            row = store.definition(self.session, account_id, evtid)
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


def _open_requests(
    session: Session, accounts: set[str], keys: set[str], now: datetime
) -> dict[str, _Request]:
    """For each match key, the newest open request created within the window."""
    if not keys:
        return {}
    found: dict[str, _Request] = {}
    by_id: dict[int, _Request] = {}
    for request_id, key, *values in store.open_requests(session, accounts, keys, now):
        if key is not None and key not in found:
            found[key] = by_id[request_id] = _Request(
                request_id, dict(zip(UPDATABLE, values, strict=True)))
    if not found:
        return found
    for request_id, digest in store.note_hashes(session, by_id):
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
        for request_id, key in store.insert_requests(session, rows):
            created[key].id = request_id
    touched = [{"id": request.id, **request.changed, "updated_at": now}
               for request in requests if request.touched]
    if touched:
        store.update_requests(session, touched)
    notes = [
        {"request_id": request.id, "text": body, "text_hash": digest, "internal": internal,
         "transid": transid, "created_at": now}
        for request, body, digest, internal, transid in new_notes
    ]
    if notes:
        store.insert_notes(session, notes)


def _finish(session: Session, work: list[_Work], now: datetime, *, claimed: bool = True
            ) -> list[int]:
    """End the transaction rows (insert them ended, when the run did not claim them), insert
    their deliveries; returns the delivery ids."""
    for item in work:
        item.end()
    if work and claimed:
        store.finish(session, [item.finished_row(now) for item in work])
    elif work:
        store.insert_finished(session, [
            {**_transaction_row(item.batch, item.event, now), **item.finished_row(now)}
            for item in work])
    deliveries = [
        new_delivery(
            transid=item.event.transid, account_id=item.batch.account_id,
            correlationid=item.event.correlationid, evtid=item.event.evtid, status=item.status,
            outcome=item.outcome, url=item.notifyurl,
            failure=item.failure.code if item.failure else None, now=now,
        )
        for item in work if item.notifyurl
    ]
    ids = store.insert_deliveries(session, deliveries) if deliveries else []
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
    _act_on(session, work, now, directory)
    return _finish(session, work, now)


def process_held(
    session: Session, batches: Sequence[EventBatch], now: datetime, directory: Directory
) -> dict[str, dict[str, Any] | None]:
    """:func:`process_batches` for events their caller holds: none was processed before, and
    no other run can take one until this transaction ends (mail's: its row locked while it is
    ``received``; on SQLite the run is the one writer from its take on: shared/mail/store.py
    ``take``, so its match keys are held too). So nothing is claimed: each transaction row is
    inserted once, ended, as the run ends, instead of claimed, then updated (its second write
    of every row cost the mail path more than its parsing). Returns each event's outcome (None
    unless it completed). Their batches have no notify URL: a delivery would need queueing.
    """
    work = _owned_work(batches, {event.transid for batch in batches for event in batch.events})
    if any(item.notifyurl for item in work):
        raise ValueError("process_held queues no delivery: the events have a notify URL")
    _act_on(session, work, now, directory)
    _finish(session, work, now, claimed=False)
    return {item.event.transid: item.outcome if item.status == "completed" else None
            for item in work}


def _act_on(session: Session, work: list[_Work], now: datetime, directory: Directory) -> None:
    """Create or update the requests of the run's events (each item's outcome or failure)."""
    live = _live(_Context(session, directory), work, now)
    keys = {item.key for item in live if item.key}
    store.lock_match_keys(session, keys)
    accounts = {item.draft.account_id for item in live if item.key and item.draft}
    requests = _open_requests(session, accounts, keys, now)
    new_notes: list[_NewNote] = []
    for item in live:
        _apply(item, requests, new_notes, now)
    _write(session, list(requests.values()), new_notes, now)


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


def record_failure(
    session: Session, batch: EventBatch, error: BaseException, now: datetime
) -> list[int]:
    """End the batch's unprocessed events as ``failed`` by ``error``; returns delivery ids.

    Whatever made the events fail, their text cannot fail this too: it is stored sanitised
    (no NUL, no lone surrogate, no longer than its column), so a failure is recorded once.
    """
    batch = store.recordable(batch)
    work = _owned_work([batch], _claim(session, [batch], now))
    failure = EventFailed(failure_code(error), store.storable(reason(error)))
    for item in work:
        item.failure = failure
    return _finish(session, work, now)


def process_job(
    batches: Sequence[EventBatch], directory: Directory, backoff: Backoff,
    database_url: str | None = None,
) -> list[int] | None:
    """Process the batches a worker took together; returns the ids of the deliveries to queue.

    Every event ends ``completed``, ``expired`` or ``failed``: the batches are one run, and when
    it fails, the failing events are found and each recorded ``failed`` once while the others
    complete (shared/transactions/failures.py). Each run and each record commits on its own
    before this returns, so the deliveries may be queued at once.

    None when the database is unreachable: ``backoff`` has paused, and the caller gives the
    messages back to the queue. An outage spends no retry budget, however long it lasts; what
    committed before it is found taken when the messages come back.
    """
    def run(part: Sequence[EventBatch]) -> list[int]:
        with session_scope(database_url) as session:
            return process_batches(session, part, datetime.now(UTC), directory)

    def record(single: EventBatch, error: BaseException) -> list[int]:
        with session_scope(database_url) as session:
            return record_failure(session, single, error, datetime.now(UTC))

    try:
        ids = process_isolating(batches, run, record)
    except Exception as exc:  # only an outage gets out of process_isolating
        log.warning("database unreachable, job back to the queue after a pause",
                    events=sum(len(batch.events) for batch in batches), error=reason(exc))
        backoff.pause()
        return None
    backoff.reset()
    return ids
