"""The worker's error policy (shared/transactions/failures.py), with no broker and no database.

``run`` and ``record`` are fakes that keep what a database would have committed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    TimeoutError,
)

from shared.codes import Code
from shared.transactions.failures import (
    Backoff,
    Fault,
    classify,
    failure_code,
    process_isolating,
    reason,
)
from shared.transactions.schemas import EventBatch


class _Orig(Exception):
    pass


def db_error(kind: type[DBAPIError], message: str = "boom", *,
             invalidated: bool = False) -> DBAPIError:
    return kind("INSERT ... a very long statement", {"rows": "[...]"}, _Orig(message),
                connection_invalidated=invalidated)


@pytest.mark.parametrize(("error", "fault"), [
    (db_error(OperationalError), Fault.OUTAGE),
    (db_error(InterfaceError), Fault.OUTAGE),
    (db_error(DBAPIError, invalidated=True), Fault.OUTAGE),
    (db_error(DataError, invalidated=True), Fault.OUTAGE),
    (TimeoutError("QueuePool limit reached"), Fault.OUTAGE),
    (db_error(DataError), Fault.DATA),
    (db_error(IntegrityError), Fault.DATA),
    (ValueError("bad"), Fault.DATA),
    (OverflowError("too big"), Fault.DATA),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), Fault.DATA),
    (KeyError("x"), Fault.BUG),
    (db_error(DBAPIError), Fault.BUG),
])
def test_classify(error: BaseException, fault: Fault) -> None:
    assert classify(error) is fault


def test_failure_code_and_reason() -> None:
    data = db_error(DataError, "\\u0000 cannot be converted to text.")
    assert failure_code(data) is Code.INVALID_VALUES
    assert failure_code(KeyError("x")) is Code.INTERNAL_ERROR
    # The database's message, not the statement and the rows of the whole run.
    assert reason(data) == "_Orig: \\u0000 cannot be converted to text."
    assert reason(ValueError("x" * 5000)).startswith("ValueError: xxx")
    assert len(reason(ValueError("x" * 5000))) == 1000


def batch(*names: str) -> EventBatch:
    return EventBatch.model_validate({
        "channel": "webex", "account_id": "wdc", "received_at": datetime.now(UTC),
        "events": [{"transid": name, "evtid": "e"} for name in names],
    })


class Database:
    """A fake store: a run commits all its events or none; an event named ``poison*`` fails
    every run it is in with ``error``."""

    def __init__(self, error: Exception | None = None, *, record_error: Exception | None = None,
                 outage_on_run: int | None = None) -> None:
        self.error = error or db_error(DataError, "unsupported Unicode escape sequence")
        self.record_error = record_error
        self.outage_on_run = outage_on_run
        self.runs: list[list[str]] = []
        self.committed: dict[str, str] = {}

    def run(self, batches: Sequence[EventBatch]) -> list[int]:
        names = [event.transid for b in batches for event in b.events]
        self.runs.append(names)
        if len(self.runs) == self.outage_on_run:
            raise db_error(OperationalError, "server closed the connection unexpectedly")
        if any(name.startswith("poison") for name in names):
            raise self.error
        for name in names:
            assert name not in self.committed, f"{name} processed twice"
            self.committed[name] = "completed"
        return [len(self.committed)]

    def record(self, single: EventBatch, error: BaseException) -> list[int]:
        (event,) = single.events
        if self.record_error is not None:
            raise self.record_error
        assert event.transid not in self.committed, f"{event.transid} recorded twice"
        self.committed[event.transid] = f"failed: {reason(error)}"
        return [-1]


def test_the_happy_path_is_one_run_of_the_batches_as_given() -> None:
    database = Database()
    batches = [batch("a", "b"), batch("c")]
    assert process_isolating(batches, database.run, database.record) == [3]
    assert database.runs == [["a", "b", "c"]]


@pytest.mark.parametrize("size", [2, 3, 16, 100, 1000])
def test_one_poison_event_fails_alone_and_its_neighbours_complete(size: int) -> None:
    database = Database()
    names = [f"good-{i}" for i in range(size)]
    names.insert(size // 2, "poison")
    # Spread over batches of several events, as a group-committed message carries them.
    batches = [batch(*names[i:i + 7]) for i in range(0, len(names), 7)]
    ids = process_isolating(batches, database.run, database.record)
    assert database.committed.pop("poison").startswith("failed: _Orig: unsupported Unicode")
    assert database.committed == {name: "completed" for name in names if name != "poison"}
    assert -1 in ids
    # Halving, not one by one: about two runs per level.
    assert len(database.runs) <= 1 + 2 * math.ceil(math.log2(size + 1))


def test_several_poison_events_each_fail_once() -> None:
    database = Database(ValueError("year 99999 is out of range"))
    names = ["poison-1", "good-1", "good-2", "poison-2", "poison-3", "good-3"]
    process_isolating([batch(*names)], database.run, database.record)
    assert database.committed == {
        name: "failed: ValueError: year 99999 is out of range" if name.startswith("poison")
        else "completed" for name in names
    }


def test_a_lone_event_that_fails_is_recorded_without_a_second_run() -> None:
    database = Database()
    process_isolating([batch("poison")], database.run, database.record)
    assert database.runs == [["poison"]]
    assert database.committed["poison"].startswith("failed")


def test_an_outage_is_raised_and_nothing_is_recorded() -> None:
    database = Database(outage_on_run=1)
    with pytest.raises(OperationalError):
        process_isolating([batch("a", "poison", "b")], database.run, database.record)
    assert database.committed == {}


def test_an_outage_while_isolating_is_raised_and_what_committed_stays() -> None:
    database = Database(outage_on_run=3)  # the whole run, the first half, then the second
    with pytest.raises(OperationalError):
        process_isolating([batch("a", "b", "poison", "c")], database.run, database.record)
    assert database.committed == {"a": "completed", "b": "completed"}


def test_an_outage_while_recording_is_raised() -> None:
    database = Database(record_error=db_error(OperationalError))
    with pytest.raises(OperationalError):
        process_isolating([batch("a", "poison")], database.run, database.record)


def test_a_failure_that_cannot_be_recorded_drops_the_event_not_the_others() -> None:
    database = Database(db_error(IntegrityError, "violates foreign key constraint"),
                        record_error=db_error(IntegrityError, "violates foreign key constraint"))
    ids = process_isolating([batch("a", "poison", "b")], database.run, database.record)
    assert database.committed == {"a": "completed", "b": "completed"}
    assert -1 not in ids


def test_a_bug_fails_the_event_too_never_retried_forever() -> None:
    database = Database(KeyError("outcome"))
    process_isolating([batch("a", "poison")], database.run, database.record)
    assert database.committed == {"a": "completed", "poison": "failed: KeyError: 'outcome'"}


def test_the_outage_pause_doubles_to_30_s_and_stays_there_however_long_the_outage() -> None:
    pauses: list[float] = []
    backoff = Backoff(sleep=pauses.append)
    for _ in range(2000):  # 2000 pauses: over 16 hours of an outage
        backoff.pause()
    assert pauses[:8] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert set(pauses[6:]) == {30}
    backoff.reset()
    backoff.pause()
    assert pauses[-1] == 0.5
