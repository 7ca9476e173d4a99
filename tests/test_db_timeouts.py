"""Nothing waits for PostgreSQL without a limit (DESIGN 6); SQLite is left as it was."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shared.db import engine as db
from tests.resilience.proxy import TcpProxy


@pytest.mark.postgres
def test_a_black_holed_database_is_given_up_on(postgres_url: str) -> None:
    with TcpProxy(5432) as proxy:
        engine = db.make_engine(postgres_url.replace(":5432/", f":{proxy.port}/"),
                                statement_timeout=1)
        with engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "1s"
            proxy.blackhole()
            started = time.monotonic()
            with pytest.raises(OperationalError) as caught:
                connection.execute(text("SELECT 1"))
            # The server never sees its statement timeout: the client's own limit ends the wait.
            assert time.monotonic() - started < 1 + db.CANCEL_MARGIN + 1
            assert db.database_unreachable(caught.value)
        started = time.monotonic()
        with pytest.raises(OperationalError), engine.connect():
            pass
        assert time.monotonic() - started < 2 + 1  # the connect timeout
        proxy.restore()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()


@pytest.mark.postgres
def test_a_black_holed_database_is_given_up_on_by_the_listener_s_loop(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SMTP listener's LoopConnection: its sessions get 451 in time, not a hung DATA."""
    monkeypatch.setattr(db, "_statement_timeout", [1.0])
    with TcpProxy(5432) as proxy:
        held = db.LoopConnection(url=postgres_url.replace(":5432/", f":{proxy.port}/"))

        async def select_one() -> object:
            async with held() as connection:
                cursor = await connection.execute("SELECT 1")
                return (await cursor.fetchone() or [None])[0]

        async def uses() -> None:
            async with held() as connection:
                cursor = await connection.execute("SHOW statement_timeout")
                assert await cursor.fetchone() == ("1s",)
            proxy.blackhole()
            started = time.monotonic()
            with pytest.raises(OperationalError) as caught:
                await select_one()
            assert time.monotonic() - started < 1 + db.CANCEL_MARGIN + 1
            assert db.database_unreachable(caught.value)
            started = time.monotonic()
            with pytest.raises(OperationalError):
                await select_one()  # connecting anew, within the connect timeout
            assert time.monotonic() - started < 2 + 1
            proxy.restore()
            assert await select_one() == 1

        asyncio.run(uses())
        held.close()


@pytest.mark.postgres
def test_the_worker_has_a_statement_timeout_of_its_own(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "_statement_timeout", [])
    # Engines made before (importing worker.app sets the worker's timeout) would keep theirs.
    db.dispose_engines()
    try:
        with db.session_scope(postgres_url) as session:
            assert session.execute(text("SHOW statement_timeout")).scalar() == "3s"
        db.use_statement_timeout(120)
        with db.session_scope(postgres_url) as session:
            assert session.execute(text("SHOW statement_timeout")).scalar() == "2min"
    finally:
        db.dispose_engines()


def test_sqlite_is_unaffected(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}", statement_timeout=1)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()
