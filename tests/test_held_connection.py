"""``HeldConnection`` (shared/db/engine.py): the connection mail intake keeps from one group commit
to the next, and what happens when the database drops it; and ``LoopConnection``, the same on
the SMTP listener's event loop."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shared.db.engine import (
    HeldConnection,
    LoopConnection,
    database_unreachable,
    dispose_engines,
    get_engine,
)
from tests.conftest import backend, terminate


@pytest.mark.postgres
def test_one_connection_serves_use_after_use(postgres_url: str) -> None:
    held = HeldConnection(url=postgres_url)
    pids = []
    for _ in range(3):
        with held() as connection:
            pids.append(backend(connection))
    assert len(set(pids)) == 1
    dispose_engines()  # as a fork or a new statement timeout does: the engine is a new one
    with held() as connection:
        assert backend(connection) != pids[0]


def test_closing_gives_the_connection_back_to_the_pool(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'held.sqlite'}"
    held = HeldConnection(url=url)
    with held() as connection:
        connection.execute(text("SELECT 1"))
    assert get_engine(url).pool.checkedout() == 1  # type: ignore[attr-defined]
    held.close()
    assert get_engine(url).pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_a_connection_dropped_under_load_fails_one_use_then_is_replaced(
    postgres_url: str,
) -> None:
    held = HeldConnection(url=postgres_url)
    with held() as connection:
        first = backend(connection)
    terminate(first)
    with pytest.raises(OperationalError) as caught, held() as connection:
        backend(connection)
    assert database_unreachable(caught.value)  # mail intake answers 451: nothing was stored
    with held() as connection:
        assert backend(connection) != first


@pytest.mark.postgres
def test_a_connection_dropped_in_a_quiet_spell_costs_nothing(postgres_url: str) -> None:
    held = HeldConnection(idle=0, url=postgres_url)
    with held() as connection:
        first = backend(connection)
    terminate(first)
    with held() as connection:  # back to the pool, and taken again with its ping
        assert backend(connection) != first


def write_then_fail(held: HeldConnection, table: str) -> None:
    with held() as connection:
        connection.execute(text(f"INSERT INTO {table} VALUES (1)"))
        raise RuntimeError("after the write")


def writes_kept(held: HeldConnection) -> int:
    """Rows kept of a use that failed after its write."""
    table = f"held_{uuid.uuid4().hex[:8]}"
    with held() as connection:
        connection.execute(text(f"CREATE TABLE {table} (n integer)"))
    with pytest.raises(RuntimeError):
        write_then_fail(held, table)
    with held() as connection:
        kept = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
        connection.execute(text(f"DROP TABLE {table}"))
    assert isinstance(kept, int)
    return kept


@pytest.mark.postgres
def test_on_postgresql_each_statement_commits_by_itself(postgres_url: str) -> None:
    """Why a caller's writes must each be one statement."""
    assert writes_kept(HeldConnection(url=postgres_url)) == 1


def test_on_sqlite_a_use_is_one_transaction(tmp_path: Path) -> None:
    assert writes_kept(HeldConnection(url=f"sqlite:///{tmp_path / 'held.sqlite'}")) == 0


# --- LoopConnection: the same for the SMTP listener's event loop (PostgreSQL through psycopg) ---

async def loop_backend(held: LoopConnection) -> int:
    async with held() as connection:
        cursor = await connection.execute("SELECT pg_backend_pid()")
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.postgres
def test_on_a_loop_one_connection_serves_use_after_use(postgres_url: str) -> None:
    held = LoopConnection(url=postgres_url)

    async def uses() -> list[int]:
        return [await loop_backend(held) for _ in range(3)]

    pids = asyncio.run(uses())
    assert len(set(pids)) == 1
    held.close()


@pytest.mark.postgres
def test_on_a_loop_uses_at_once_take_turns_on_one_connection(postgres_url: str) -> None:
    held = LoopConnection(url=postgres_url)

    async def use() -> tuple[int, float, float]:
        async with held() as connection:
            began = time.monotonic()
            cursor = await connection.execute("SELECT pg_backend_pid(), pg_sleep(0.2)")
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0]), began, time.monotonic()

    async def uses() -> list[tuple[int, float, float]]:
        return list(await asyncio.gather(use(), use()))

    (first, _, ended), (second, began_too, _) = sorted(asyncio.run(uses()),
                                                           key=lambda use: use[1])
    assert first == second
    assert began_too >= ended  # the second began once the first had ended
    held.close()


@pytest.mark.postgres
def test_on_a_loop_a_connection_dropped_under_load_fails_one_use_then_is_replaced(
    postgres_url: str,
) -> None:
    held = LoopConnection(url=postgres_url)

    async def uses() -> None:
        first = await loop_backend(held)
        terminate(first)
        with pytest.raises(OperationalError) as caught:
            await loop_backend(held)
        assert database_unreachable(caught.value)  # the listener answers 451: nothing stored
        assert await loop_backend(held) != first

    asyncio.run(uses())
    held.close()


@pytest.mark.postgres
def test_on_a_loop_a_connection_dropped_in_a_quiet_spell_costs_nothing(postgres_url: str) -> None:
    held = LoopConnection(idle=0, url=postgres_url)

    async def uses() -> None:
        first = await loop_backend(held)
        terminate(first)
        assert await loop_backend(held) != first  # connected anew, not used dead

    asyncio.run(uses())
    held.close()


async def loop_write_then_fail(held: LoopConnection, table: str) -> None:
    async with held() as connection:
        await connection.execute(f"INSERT INTO {table} VALUES (1)")
        raise RuntimeError("after the write")


@pytest.mark.postgres
def test_on_a_loop_each_statement_commits_by_itself(postgres_url: str) -> None:
    held, table = LoopConnection(url=postgres_url), f"held_{uuid.uuid4().hex[:8]}"
    reader = HeldConnection(url=postgres_url)
    with reader() as connection:
        connection.execute(text(f"CREATE TABLE {table} (n integer)"))
    with pytest.raises(RuntimeError):
        asyncio.run(loop_write_then_fail(held, table))
    with reader() as connection:
        assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1
        connection.execute(text(f"DROP TABLE {table}"))
    reader.close()


def test_a_loop_connection_serves_postgresql_through_psycopg_only(
    tmp_path: Path, configure: Callable[..., None],
) -> None:
    # Not on Windows, whose default event loop psycopg cannot wait on.
    assert LoopConnection(url="postgresql+psycopg://eventdesk@db.example/eventdesk"
                          ).serves() is (sys.platform != "win32")
    assert not LoopConnection(url=f"sqlite:///{tmp_path / 'held.sqlite'}").serves()
    configure()  # no URL of its own: the settings', the embedded default's SQLite
    assert not LoopConnection().serves()


@pytest.mark.postgres
def test_a_loop_connection_reads_its_url_as_an_engine_does(postgres_url: str) -> None:
    """The URL's query parameters, quoted as SQLAlchemy takes them (a space is %20)."""
    held = LoopConnection(url=f"{postgres_url}?application_name=eventdesk%20smtp")

    async def name() -> object:
        async with held() as connection:
            cursor = await connection.execute("SHOW application_name")
            return (await cursor.fetchone() or [None])[0]

    assert asyncio.run(name()) == "eventdesk smtp"
    held.close()
