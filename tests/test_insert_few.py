"""``dialect.insert_few`` (shared/db/dialect.py): intake's group commit of a few raw mails, given
to psycopg itself on PostgreSQL; and ``insert_few_async``, the SMTP listener's, on its event
loop. What they store, skip and refuse is what ``insert_rows`` would: the rows as given, the
conflicts skipped, bad values refused (never cut), and the database's errors as SQLAlchemy's,
so intake tells an outage (451) from a bad message."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from shared.db import dialect
from shared.db.engine import (
    HeldConnection,
    LoopConnection,
    database_unreachable,
    get_engine,
    session_scope,
)
from shared.db.models import MailMessage
from tests.conftest import backend, terminate

RETURNING = ("transid", "id")
SKIP = ("account_id", "message_id")
NOW = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
# Every byte value, a NUL and a CR LF among them: a raw message is bytes, whatever they are.
EVERY_BYTE = bytes(range(256))
# The demo records' Service Desk team of wdc.
TEAM = 101
# Mails of MailMessage's 9 columns that go as one VALUES list.
FEW = dialect.FEW_PARAMETERS // 9


def row(**given: Any) -> dict[str, Any]:
    return {"transid": uuid.uuid4().hex, "account_id": "wdc",
            "recipient": "wdc@mail.eventdesk.local", "team_id": None,
            "message_id": f"<{uuid.uuid4().hex}@test>", "raw": EVERY_BYTE,
            "peer": "smtp 127.0.0.1", "received_at": NOW, "status": "received", **given}


class OnLoop:
    """``insert_few_async`` through a LoopConnection, as the SMTP listener stores mail (each
    insert on a loop of its own), and a HeldConnection to read what it stored."""

    def __init__(self, url: str) -> None:
        self.connection = LoopConnection(url=url)
        self.reader = HeldConnection(url=url)

    async def insert(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        async with self.connection() as connection:
            return await dialect.insert_few_async(connection, MailMessage, rows,
                                                  returning=RETURNING, skip_conflicts_on=SKIP)

    def close(self) -> None:
        self.connection.close()
        self.reader.close()


Held = HeldConnection | OnLoop


def held_for(request: pytest.FixtureRequest, database: str) -> Held:
    url = request.getfixturevalue(f"{database.removesuffix('-loop')}_url")
    return OnLoop(url) if database.endswith("-loop") else HeldConnection(url=url)


@pytest.fixture(params=["postgres", "sqlite", "postgres-loop"])
def held(request: pytest.FixtureRequest) -> Iterator[Held]:
    connection = held_for(request, request.param)
    yield connection
    connection.close()


@pytest.fixture
def pg_held(postgres_url: str) -> Iterator[HeldConnection]:
    connection = HeldConnection(url=postgres_url)
    yield connection
    connection.close()


@pytest.fixture(params=["postgres", "postgres-loop"])
def pg_either(request: pytest.FixtureRequest) -> Iterator[Held]:
    """PostgreSQL, through insert_few or insert_few_async."""
    connection = held_for(request, request.param)
    yield connection
    connection.close()


def insert(held: Held, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    if isinstance(held, OnLoop):
        return asyncio.run(held.insert(rows))
    with held() as connection:
        return dialect.insert_few(connection, MailMessage, rows, returning=RETURNING,
                                  skip_conflicts_on=SKIP)


def stored(held: Held, transids: list[str]) -> dict[str, dict[str, Any]]:
    with (held.reader if isinstance(held, OnLoop) else held)() as connection:
        found = connection.execute(select(*MailMessage.__table__.c).where(
            MailMessage.transid.in_(transids))).mappings()
        return {item["transid"]: dict(item) for item in found}


@pytest.mark.parametrize("count", [1, 3, FEW, FEW + 1, 20])
def test_the_rows_are_stored_as_given_and_their_ids_returned(
    held: Held, count: int,
) -> None:
    # Text beyond ASCII; a team or none, and in a group of one, a column of NULLs.
    rows = [row(recipient=f"support.wdc@mail.eventdesk.local — {number} ✓",
                team_id=TEAM if number % 2 else None) for number in range(count)]
    returned = dict(insert(held, rows))
    assert sorted(returned) == sorted(given["transid"] for given in rows)
    kept = stored(held, list(returned))
    for given in rows:
        found = kept[given["transid"]]
        assert found["id"] == returned[given["transid"]]
        assert {name: found[name] for name in given} == given


def test_a_row_that_conflicts_is_skipped_and_the_others_stored(held: Held) -> None:
    first = row()
    insert(held, [first])
    again, other = row(message_id=first["message_id"]), row()
    assert [transid for transid, _ in insert(held, [again, other])] == [other["transid"]]


def test_of_two_copies_in_one_group_the_first_is_stored(held: Held) -> None:
    first = row()
    copy = row(message_id=first["message_id"])
    assert [transid for transid, _ in insert(held, [first, copy])] == [first["transid"]]


@pytest.mark.postgres
def test_a_few_rows_go_to_psycopg_itself_more_through_sqlalchemy(
    pg_held: HeldConnection, postgres_url: str,
) -> None:
    """The point of insert_few: a small group costs no JSON array and no SQLAlchemy execution."""
    through_sqlalchemy: list[str] = []

    def seen(*args: Any) -> None:
        through_sqlalchemy.append(args[2])

    engine = get_engine(postgres_url)
    event.listen(engine, "before_cursor_execute", seen)
    try:
        insert(pg_held, [row() for _ in range(FEW)])
        assert not [sql for sql in through_sqlalchemy if "mail_messages" in sql]
        insert(pg_held, [row() for _ in range(FEW + 1)])
        assert [sql for sql in through_sqlalchemy if "mail_messages" in sql]
    finally:
        event.remove(engine, "before_cursor_execute", seen)


@pytest.mark.postgres
def test_a_value_too_long_for_its_column_is_refused_not_cut(pg_either: Held) -> None:
    with pytest.raises(DataError):
        insert(pg_either, [row(transid="t" * 65)])


@pytest.mark.postgres
@pytest.mark.parametrize("count", [1, FEW + 1])
def test_a_naive_datetime_is_refused(pg_either: Held, count: int) -> None:
    with pytest.raises(TypeError):
        insert(pg_either, [row() for _ in range(count - 1)]
               + [row(received_at=datetime(2026, 11, 30, 12, 0))])


@pytest.mark.postgres
@pytest.mark.parametrize("count", [1, FEW + 1])
def test_a_row_the_database_refuses_is_sqlalchemys_integrity_error(
    pg_either: Held, count: int,
) -> None:
    rows = [row() for _ in range(count - 1)] + [row(account_id="no-such-account")]
    with pytest.raises(IntegrityError) as caught:
        insert(pg_either, rows)
    assert not database_unreachable(caught.value)  # one message's: the others are stored


@pytest.mark.postgres
def test_a_connection_the_database_ended_is_an_outage(pg_held: HeldConnection) -> None:
    with pg_held() as connection:
        pid = backend(connection)
    terminate(pid)
    with pytest.raises(OperationalError) as caught:
        insert(pg_held, [row()])
    assert database_unreachable(caught.value)  # intake answers 451: the sender retries
    assert insert(pg_held, [row()])  # and the next group has a new connection


@pytest.mark.postgres
def test_in_a_session_the_rows_wait_for_its_commit(
    pg_held: HeldConnection, postgres_url: str,
) -> None:
    given = row()
    with session_scope(postgres_url) as session:
        dialect.insert_few(session, MailMessage, [given])
        assert not stored(pg_held, [given["transid"]])
    assert stored(pg_held, [given["transid"]])
