"""The worker's rules called directly, without a broker, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from shared.db.engine import session_scope
from shared.db.models import Note, NotificationDelivery, Request, Transaction
from shared.records.directory import Directory
from shared.transactions.failures import Backoff
from shared.transactions.schemas import EventBatch
from shared.transactions.service import (
    process_batches,
    process_held,
    process_job,
    record_failure,
)
from shared.transactions.views import transaction_view

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def batch(*events: dict[str, Any], **fields: Any) -> EventBatch:
    return EventBatch.model_validate({
        "channel": "webex", "account_id": "wdc", "received_at": NOW - timedelta(seconds=1),
        "events": [{"transid": uuid.uuid4().hex, "evtid": "server-down", **e} for e in events],
        **fields,
    })


def run(db: str, events: EventBatch, now: datetime = NOW) -> list[int]:
    with session_scope(db) as session:
        return process_batches(session, [events], now, Directory(0))


def isolating(db: str, batches: list[EventBatch]) -> list[int]:
    """What the worker does with a job: the rules, and the failure policy around them."""
    ids = process_job(batches, Directory(0), Backoff(), db)
    assert ids is not None, "the database is reachable"
    return ids


def transaction(db: str, transid: str) -> Transaction:
    with session_scope(db) as session:
        row = session.get(Transaction, transid)
        assert row is not None
        return row


def requests_with(db: str, source_id: str) -> list[Request]:
    with session_scope(db) as session:
        return list(session.scalars(select(Request).where(Request.source_id == source_id)))


def test_event_becomes_a_request(db: str) -> None:
    source_id = uuid.uuid4().hex
    events = batch({"correlationid": "c1", "parameters": {
        "host": "db1", "subject": "Server Down", "source": "nagios", "sourceID": source_id,
        "note": "db1 does not answer ping",
    }})
    run(db, events)
    row = transaction(db, events.events[0].transid)
    assert row.status == "completed"
    assert row.completed_at == NOW
    (request,) = requests_with(db, source_id)
    assert row.outcome == {"action": "created", "request_id": request.id}
    assert (request.subject, request.source, request.category, request.impact, request.status) == (
        "Server Down", "nagios", "incident", "high", "assigned"
    )
    with session_scope(db) as session:
        notes = session.scalars(select(Note.text).where(Note.request_id == request.id)).all()
    assert notes == ["db1 does not answer ping"]


def test_same_batch_twice_changes_nothing(db: str) -> None:
    source_id = uuid.uuid4().hex
    events = batch({"parameters": {"host": "h", "sourceID": source_id, "subject": "one"}},
                   {"parameters": {"host": "h2", "sourceID": source_id, "subject": "two"}})
    run(db, events)
    first = [transaction(db, e.transid).outcome for e in events.events]
    assert run(db, events) == []
    assert [transaction(db, e.transid).outcome for e in events.events] == first
    assert len(requests_with(db, source_id)) == 2


def test_expired_event_takes_no_action(db: str) -> None:
    source_id = uuid.uuid4().hex
    events = batch({"parameters": {"host": "h", "sourceID": source_id}},
                   expiry=NOW - timedelta(seconds=1))
    run(db, events)
    row = transaction(db, events.events[0].transid)
    assert (row.status, row.outcome) == ("expired", None)
    assert requests_with(db, source_id) == []


def test_expiry_still_ahead_is_processed(db: str) -> None:
    events = batch({"parameters": {"host": "h"}}, expiry=NOW + timedelta(seconds=1))
    run(db, events)
    assert transaction(db, events.events[0].transid).status == "completed"


def test_definition_defaults_fill_what_the_event_leaves_out(db: str) -> None:
    source_id = uuid.uuid4().hex
    events = batch({"parameters": {"host": "h", "sourceID": source_id, "category": "rfc",
                                   "impact": "", "note": source_id}})
    run(db, events)
    (request,) = requests_with(db, source_id)
    # The event's category wins; its empty impact leaves the definition's default in place.
    assert (request.category, request.impact) == ("rfc", "high")
    # No subject in the event: the definition's template names it.
    assert request.subject == "h is down"


def test_a_value_the_worker_cannot_use_fails_that_event_only(db: str) -> None:
    source_id = uuid.uuid4().hex
    events = batch({"parameters": {"host": "h", "sourceID": source_id, "subject": source_id,
                                   "desired_completion_at": "soon"}},
                   {"parameters": {"host": "h", "sourceID": source_id, "subject": source_id}})
    run(db, events)
    bad, good = (transaction(db, e.transid) for e in events.events)
    assert bad.status == "failed"
    assert "desired_completion_at" in (bad.error or "")
    assert good.status == "completed"
    assert len(requests_with(db, source_id)) == 1


def test_deleted_definition_fails_the_event(db: str) -> None:
    events = batch({"evtid": "gone-since-intake", "parameters": {}})
    run(db, events)
    row = transaction(db, events.events[0].transid)
    assert row.status == "failed"
    assert "gone-since-intake" in (row.error or "")


def test_notifyurl_gets_one_delivery_per_event(db: str) -> None:
    events = batch({"correlationid": "a", "parameters": {"host": "h", "note": uuid.uuid4().hex}},
                   {"correlationid": "b", "parameters": {"host": "h", "note": uuid.uuid4().hex}},
                   notifyurl="https://example.com/hook")
    ids = run(db, events)
    assert len(ids) == 2
    with session_scope(db) as session:
        deliveries = session.scalars(
            select(NotificationDelivery).where(NotificationDelivery.id.in_(ids))
        ).all()
        payloads = sorted((d.payload for d in deliveries), key=lambda p: p["correlationid"])
    assert [p["correlationid"] for p in payloads] == ["a", "b"]
    first = payloads[0]
    assert (first["status"], first["code"], first["description"], first["evtid"]) == (
        "completed", "1000", "Completed", "server-down"
    )
    assert first["outcome"]["action"] == "created"
    assert run(db, events) == []


def test_an_event_given_twice_in_one_run_is_acted_on_once(db: str) -> None:
    note = uuid.uuid4().hex
    events = batch({"parameters": {"host": "h", "note": note}},
                   notifyurl="https://example.com/hook")
    with session_scope(db) as session:  # a message redelivered into the same worker batch
        ids = process_batches(session, [events, events], NOW, Directory(0))
    assert len(ids) == 1
    outcome = transaction(db, events.events[0].transid).outcome
    assert outcome is not None
    assert outcome["action"] == "created"
    with session_scope(db) as session:
        assert session.scalars(select(Note.request_id).where(Note.text == note)).all() == [
            outcome["request_id"]
        ]


def test_held_events_are_stored_ended_once_and_their_outcomes_returned(db: str) -> None:
    """What mail runs (its rows locked by the run): no claim, one write a transaction."""
    events = batch({"parameters": {"host": "h", "note": uuid.uuid4().hex}},
                   {"parameters": {"host": "h", "desired_completion_at": "soon"}})
    with session_scope(db) as session:
        outcomes = process_held(session, [events], NOW, Directory(0))
    created, failing = (event.transid for event in events.events)
    stored = transaction(db, created)
    assert stored.status == "completed"
    assert outcomes[created] == stored.outcome
    assert stored.outcome is not None
    assert stored.outcome["action"] == "created"
    with session_scope(db) as session:
        assert session.get(Request, stored.outcome["request_id"]) is not None
    assert outcomes[failing] is None
    assert transaction(db, failing).status == "failed"


def test_held_events_with_a_notify_url_are_refused(db: str) -> None:
    events = batch({"parameters": {"host": "h"}}, notifyurl="https://example.com/hook")
    with session_scope(db) as session, pytest.raises(ValueError, match="notify URL"):
        process_held(session, [events], NOW, Directory(0))


def test_a_nul_character_in_a_parameter_is_kept(db: str) -> None:
    events = batch({"parameters": {"host": "h", "comment": "a\x00b"}})
    run(db, events)
    row = transaction(db, events.events[0].transid)
    assert row.status == "completed"
    assert row.parameters["comment"] == "a\x00b"


def test_status_view_is_scoped_to_the_account(db: str) -> None:
    events = batch({"parameters": {"host": "h"}})
    run(db, events)
    transid = events.events[0].transid
    with session_scope(db) as session:
        mine = transaction_view(session, "wdc", transid)
        theirs = transaction_view(session, "someone-else", transid)
    assert mine is not None
    assert mine.status == "completed"
    assert theirs is None



# Each is refused at the intake now, so the worker only meets them in a message not written by
# our api (or by an older one). A NUL is text to SQLite, so it is poison on PostgreSQL only; a
# lone surrogate cannot be encoded for either.
POISONS: dict[str, dict[str, Any]] = {
    "nul correlationid": {"correlationid": "a\x00b"},
    "nul evtid": {"evtid": "server\x00down"},
    "nul in a field": {"parameters": {"host": "h", "subject": "disk\x00full"}},
    "surrogate correlationid": {"correlationid": "a\ud800b"},
}
NUL_IS_TEXT = {"nul correlationid", "nul evtid", "nul in a field"}
# Each poison on each database where it is one.
POISON_CASES = [
    *(("sqlite", poison) for poison in POISONS if poison not in NUL_IS_TEXT),
    *(pytest.param("postgres", poison, marks=pytest.mark.postgres) for poison in POISONS),
]


def good(source_id: str, number: int) -> dict[str, Any]:
    return {"correlationid": f"good-{number}", "parameters": {
        "host": "h", "sourceID": source_id, "subject": f"{source_id} {number}"}}


@pytest.mark.parametrize(("db", "poison"), POISON_CASES, indirect=["db"])
def test_a_poison_event_fails_alone_between_two_that_complete(db: str, poison: str) -> None:
    source_id = uuid.uuid4().hex
    # The poison event in a message of its own between two others, and among two good events
    # of its own message: both shapes of a job a worker gets.
    events = [batch(good(source_id, 1)),
              batch(good(source_id, 2), POISONS[poison], good(source_id, 3),
                    notifyurl="https://example.com/hook"),
              batch(good(source_id, 4))]
    ids = isolating(db, events)
    rows = [transaction(db, event.transid) for b in events for event in b.events]
    assert [row.status for row in rows] == [
        "completed", "completed", "failed", "completed", "completed"]
    failed = rows[2]
    # The reason is the database's (or the encoder's) message, not the statement of the run.
    assert failed.error
    assert "INSERT" not in failed.error
    assert "\x00" not in (failed.correlationid or "") + (failed.evtid or "")
    assert len(requests_with(db, source_id)) == 4
    # Every event of the message with a notifyurl owes one notification, the failed one too.
    with session_scope(db) as session:
        payloads = {d.transid: d.payload for d in session.scalars(
            select(NotificationDelivery).where(NotificationDelivery.id.in_(ids)))}
    assert len(payloads) == 3
    assert (payloads[failed.transid]["status"], payloads[failed.transid]["code"]) == (
        "failed", "7004")
    # Delivered again, the message changes nothing: the poison event is failed once.
    assert isolating(db, events) == []
    assert transaction(db, failed.transid).completed_at == failed.completed_at


def test_recording_a_failure_cannot_fail_on_the_text_that_caused_it(db: str) -> None:
    poison = batch({"evtid": "e\x00" + "v" * 200, "correlationid": "c\x00\ud800" + "x" * 100,
                    "parameters": {"na\x00me": "va\x00lue\udfff", "host": None}},
                   notifyurl="https://example.com/\x00hook")
    with session_scope(db) as session:
        ids = record_failure(session, poison, ValueError("bad \x00 value"), NOW)
    row = transaction(db, poison.events[0].transid)
    assert (row.status, row.error) == ("failed", "ValueError: bad  value")
    assert (row.evtid, row.correlationid) == ("e" + "v" * 127, "c?" + "x" * 62)
    assert row.parameters == {"name": "value?", "host": None}
    assert row.notifyurl == "https://example.com/hook"
    assert len(ids) == 1


def test_a_failure_that_cannot_be_recorded_leaves_the_others_completed(db: str) -> None:
    # No such account: the transaction row itself cannot be written (a foreign key), so the
    # event is dropped, logged, rather than its message requeued forever.
    source_id = uuid.uuid4().hex
    stranger = batch({"parameters": {"host": "h"}}, account_id="no-such-account")
    events = [batch(good(source_id, 1)), stranger, batch(good(source_id, 2))]
    isolating(db, events)
    assert [transaction(db, b.events[0].transid).status for b in (events[0], events[2])] == [
        "completed", "completed"]
    with session_scope(db) as session:
        assert session.get(Transaction, stranger.events[0].transid) is None
