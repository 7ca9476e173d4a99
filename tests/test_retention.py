"""Retention: what a purge removes and keeps, on PostgreSQL and SQLite; the expired transid's
404; the command line; the beat schedule."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from shared.cli import main as cli
from shared.db.engine import session_scope
from shared.db.migrate import upgrade
from shared.db.models import (
    Note,
    NotificationAttempt,
    NotificationDelivery,
    Request,
    RetentionMark,
    Transaction,
)
from shared.ids import issued_at, issued_for, make_transid
from shared.retention.queries import removed_before
from shared.retention.rules import Horizon, expired_from_log, removable
from shared.retention.service import purge
from shared.settings import parse_duration
from tests.conftest import load_demo, throwaway_database

SECRET = b"test-secret"
ACCOUNT = "wdc"
NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=20)
RECENT = NOW - timedelta(hours=1)


# -- rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86400), ("12h", 43200), ("15m", 900), ("90s", 90), ("90", 90), ("2w", 1209600),
    (" 7D ", 7 * 86400),
])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "d", "1.5d", "-3d", "3y", "3 days"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_dead_deliveries_never_go_before_their_transactions() -> None:
    shorter = Horizon.at(NOW, timedelta(days=14), timedelta(days=1))
    assert shorter.undelivered == shorter.transactions == NOW - timedelta(days=14)
    longer = Horizon.at(NOW, timedelta(days=14), timedelta(days=30))
    assert longer.undelivered == NOW - timedelta(days=30)


def test_removable() -> None:
    horizon = Horizon.at(NOW, timedelta(days=14), timedelta(days=30))
    assert removable(horizon, None, None)
    assert removable(horizon, "delivered", NOW)
    assert removable(horizon, "failed", NOW)
    assert not removable(horizon, "pending", OLD - timedelta(days=100))
    assert not removable(horizon, "sending", OLD - timedelta(days=100))
    assert not removable(horizon, "dead", OLD)
    assert removable(horizon, "disabled", NOW - timedelta(days=31))


def test_transids_carry_the_time_they_were_issued_under_their_mac() -> None:
    transid = make_transid(SECRET, ACCOUNT, now=OLD.timestamp())
    assert len(transid) == 32
    assert issued_for(SECRET, ACCOUNT, transid)
    assert issued_at(transid) == OLD
    # A caller who moves the time forward gets an id that is not ours.
    later = f"{int(NOW.timestamp()):08x}" + transid[8:]
    assert not issued_for(SECRET, ACCOUNT, later)


def test_expired_from_log() -> None:
    assert expired_from_log(OLD, RECENT)
    assert not expired_from_log(NOW, RECENT)
    assert not expired_from_log(OLD, None)


# -- the purge on both databases -------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                               marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[str]:
    """A database of this module's own: a purge removes every account's old rows."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('retention') / 'eventdesk.sqlite'}"
        upgrade(url)
        load_demo(url)
        yield url
    else:
        with throwaway_database("eventdesk_retention") as url:
            load_demo(url)
            yield url


class Log:
    """Transactions written straight to the database, each with what it may own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: list[int] = []

    def add(self, received: datetime, status: str = "completed", delivery: str | None = None,
            attempts: int = 0, delivery_updated: datetime | None = None) -> str:
        transid = make_transid(SECRET, ACCOUNT, now=received.timestamp())
        with session_scope(self.url) as session:
            request = Request(account_id=ACCOUNT, subject=f"retention {transid}", status="new",
                              created_at=received, updated_at=received)
            session.add(request)
            session.flush()
            self.requests.append(request.id)
            session.add(Note(request_id=request.id, text="note", text_hash="h", transid=transid,
                             created_at=received))
            session.add(Transaction(
                transid=transid, channel="webex", account_id=ACCOUNT, received_at=received,
                status=status, created_at=received,
                completed_at=None if status == "processing" else received,
                outcome={"action": "created", "request_id": request.id},
            ))
            session.flush()
            if delivery is not None:
                row = NotificationDelivery(
                    transid=transid, account_id=ACCOUNT, url="https://example.com/hook",
                    message_id=f"msg_{uuid.uuid4().hex}", payload={}, status=delivery,
                    created_at=received, updated_at=delivery_updated or received)
                session.add(row)
                session.flush()
                session.add_all(NotificationAttempt(delivery_id=row.id, number=n + 1,
                                                    attempted_at=received)
                                for n in range(attempts))
        return transid

    def present(self, transids: list[str]) -> set[str]:
        with session_scope(self.url) as session:
            return set(session.scalars(
                select(Transaction.transid).where(Transaction.transid.in_(transids))))

    def counts(self) -> tuple[int, int, int, int, int]:
        with session_scope(self.url) as session:
            return tuple(session.scalar(select(func.count()).select_from(table)) or 0
                         for table in (Transaction, NotificationDelivery, NotificationAttempt,
                                       Request, Note))  # type: ignore[return-value]


def test_purge_removes_finished_transactions_with_their_deliveries_and_keeps_records(
    database: str,
) -> None:
    log = Log(database)
    gone = [
        log.add(OLD), log.add(OLD, "expired"), log.add(OLD, "failed"),
        log.add(OLD, delivery="delivered", attempts=2),
        log.add(OLD, delivery="failed", attempts=1),
        log.add(OLD, delivery="dead", attempts=8),
        log.add(OLD, delivery="disabled", attempts=1),
    ]
    kept = [
        log.add(OLD, "processing"),  # never removed unfinished, however old
        log.add(OLD, delivery="pending", attempts=3),  # still owed to its notify URL
        log.add(OLD, delivery="sending", attempts=1),  # leased by a worker
        log.add(RECENT), log.add(RECENT, delivery="delivered", attempts=1),
    ]
    before = log.counts()
    # A batch of two: kept rows fall between removed ones, so the cursor has to walk past them.
    result = purge(Horizon.at(NOW, timedelta(days=14)), database_url=database, batch=2)
    assert log.present(gone + kept) == set(kept)
    assert (result.transactions, result.deliveries, result.attempts) == (7, 4, 12)
    assert result.complete
    after = log.counts()
    assert after[:3] == (before[0] - 7, before[1] - 4, before[2] - 12)
    assert after[3:] == before[3:], "requests and notes are never removed"


def test_dead_deliveries_kept_longer_when_set(database: str) -> None:
    log = Log(database)
    dead = log.add(OLD, delivery="dead", attempts=1)
    disabled = log.add(OLD, delivery="disabled", delivery_updated=NOW - timedelta(days=40))
    delivered = log.add(OLD, delivery="delivered", attempts=1)
    purge(Horizon.at(NOW, timedelta(days=14), timedelta(days=30)), database_url=database)
    assert log.present([dead, disabled, delivered]) == {dead}


def test_purge_marks_how_far_it_removed_and_never_moves_back(database: str) -> None:
    purge(Horizon.at(NOW, timedelta(days=1)), database_url=database)
    purge(Horizon.at(NOW, timedelta(days=30)), database_url=database)
    with session_scope(database) as session:
        assert removed_before(session) == NOW - timedelta(days=1)


def test_purge_stops_at_its_budget(database: str) -> None:
    log = Log(database)
    transids = [log.add(OLD) for _ in range(5)]
    partial = purge(Horizon.at(NOW, timedelta(days=14)), database_url=database, batch=2,
                    budget_seconds=0)
    assert (partial.complete, partial.batches) == (False, 1)
    assert len(log.present(transids)) >= 3
    purge(Horizon.at(NOW, timedelta(days=14)), database_url=database)
    assert not log.present(transids)


# -- the api and the command line -----------------------------------------------------------


@pytest.fixture
def sqlite_database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'eventdesk.sqlite'}"
    upgrade(url)
    load_demo(url)
    return url


def test_status_of_a_purged_transid_says_it_expired(
    configure: Callable[..., None], sqlite_database: str, broker: str,
) -> None:
    from api import create_app

    configure(database_url=sqlite_database, broker_url=broker)
    client = create_app().test_client()
    log = Log(sqlite_database)
    purged = log.add(datetime.now(UTC) - timedelta(seconds=10), delivery="delivered", attempts=1)
    waiting = make_transid(SECRET, ACCOUNT)  # issued, no worker has taken it yet
    headers = {"key": "demo-key"}

    def status(transid: str) -> object:
        return client.get(f"/v1/transactions/{transid}", headers=headers).get_json()["status"]

    assert status(purged) == "completed"

    result = CliRunner().invoke(cli, ["purge", "--older-than", "2s"])
    assert result.exit_code == 0, result.output
    assert "transactions: 1 removed" in result.output
    assert "notification_deliveries: 1 removed" in result.output
    assert "notification_attempts: 1 removed" in result.output

    answer = client.get(f"/v1/transactions/{purged}", headers=headers)
    assert answer.status_code == 404
    assert "expired from the log" in answer.get_json()["message"]
    # Issued after the horizon: not yet processed, rather than removed.
    assert status(waiting) == "queued"
    never = uuid.uuid4().hex
    answer = client.get(f"/v1/transactions/{never}", headers=headers)
    assert (answer.status_code, answer.get_json()["message"]) == (404, "no such transaction")
    with session_scope(sqlite_database) as session:
        assert session.scalar(select(func.count()).select_from(Request)) == 1
        assert session.get(RetentionMark, "transactions") is not None


def test_purge_refuses_a_bad_duration(configure: Callable[..., None], sqlite_database: str
                                      ) -> None:
    configure(database_url=sqlite_database)
    result = CliRunner().invoke(cli, ["purge", "--older-than", "soon"])
    assert result.exit_code == 2
    assert "not a duration" in result.output


def test_the_configured_retention(configure: Callable[..., None]) -> None:
    from shared.settings import get_settings

    configure()
    assert get_settings().transaction_retention == timedelta(days=14)
    assert get_settings().dead_delivery_retention is None
    configure(transaction_retention="30d", dead_delivery_retention="90d", purge_interval="90s")
    settings = get_settings()
    assert (settings.transaction_retention, settings.dead_delivery_retention,
            settings.purge_interval) == (timedelta(days=30), timedelta(days=90),
                                         timedelta(seconds=90))


def test_beat_runs_the_purge_on_the_notify_queue() -> None:
    from shared.messaging import RETENTION_PURGE
    from worker.app import app
    from worker.retention import purge_expired

    entry = app.conf.beat_schedule[RETENTION_PURGE]
    assert (entry["task"], entry["options"]["queue"]) == (RETENTION_PURGE, "notify")
    assert entry["schedule"] == 300
    assert app.tasks[RETENTION_PURGE].name == purge_expired.name
    assert app.amqp.router.route({}, RETENTION_PURGE)["queue"].name == "notify"


def test_the_scheduled_purge_uses_the_configured_retention(
    configure: Callable[..., None], sqlite_database: str,
) -> None:
    from worker.retention import purge_expired

    configure(database_url=sqlite_database, transaction_retention="14d")
    log = Log(sqlite_database)
    old, recent = log.add(OLD, delivery="delivered", attempts=1), log.add(RECENT)
    assert purge_expired() == 1
    assert log.present([old, recent]) == {recent}
