"""Engines and sessions.

One engine per process, made on first use (so after a fork), never at import time. Sessions are
opened with :func:`session_scope`, which commits on success and rolls back on any error.

On PostgreSQL nothing waits for the database without a limit (DESIGN 6): connecting gives up
after ``EVENTDESK_DATABASE_CONNECT_TIMEOUT_SECONDS``, waiting for a pooled connection too, and
each statement after the process's statement timeout (the api's
``EVENTDESK_DATABASE_STATEMENT_TIMEOUT_SECONDS``, the worker's
``EVENTDESK_WORKER_STATEMENT_TIMEOUT_SECONDS``, see :func:`use_statement_timeout`). SQLite is
local: its engines keep their busy timeout only.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import get_settings

RV = TypeVar("RV")

_engines: dict[tuple[int, str], Engine] = {}
_sessionmakers: dict[tuple[int, str], sessionmaker[Session]] = {}
# This process's statement timeout, when it is not the api's (set by the worker).
_statement_timeout: list[float] = []
# How much longer than the server's statement timeout the client waits for an answer: enough
# for the server's cancellation to arrive.
CANCEL_MARGIN = 0.5


def database_unreachable(exc: BaseException) -> bool:
    """True for a failure to reach the database (refused, reset, timed out), as opposed to an
    error of the statement or the data."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout | DisconnectionError)


def use_statement_timeout(seconds: float) -> None:
    """Give this process's statements ``seconds`` (0: no limit) instead of the api's.

    Engines already made are dropped, so the next one has it.
    """
    _statement_timeout[:] = [seconds]
    dispose_engines()


class _DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection that stops waiting for an answer after ``answer_timeout`` seconds.

    The server's statement_timeout cancels a slow statement, but a database that is black-holed
    (a dropped route, a hung host) never receives it, and TCP keepalives notice nothing while a
    middlebox still acknowledges the bytes: without a limit of its own, the client waits forever.
    """

    answer_timeout: float | None = None

    def wait(
        self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None
    ) -> RV:
        try:
            return super().wait(gen, interval, timeout if timeout is not None
                                else self.answer_timeout)
        except psycopg.errors._WaitTimeout:
            raise _given_up(self.pgconn, self.answer_timeout) from None


class _DeadlineAsyncConnection(psycopg.AsyncConnection[Any]):
    """:class:`_DeadlineConnection` for an event loop (:class:`LoopConnection`). A task
    cancelled instead (asyncio's timeout) would not do: psycopg then asks the server to cancel
    the statement, through the same black hole, and waits up to 10 s more for it."""

    answer_timeout: float | None = None

    async def wait(
        self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None
    ) -> RV:
        try:
            return await super().wait(gen, interval, timeout if timeout is not None
                                      else self.answer_timeout)
        except psycopg.errors._WaitTimeout:
            raise _given_up(self.pgconn, self.answer_timeout) from None


def _given_up(pgconn: psycopg.pq.abc.PGconn, seconds: float | None
              ) -> psycopg.errors.ConnectionTimeout:
    # Half-way through the protocol the connection cannot be used again; once closed it
    # counts as a disconnect, so SQLAlchemy discards it instead of pooling it.
    pgconn.finish()
    return psycopg.errors.ConnectionTimeout(f"no answer from the database within {seconds} s")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the api read while a worker writes; busy_timeout waits for a writer instead of
    # failing at once with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, *, statement_timeout: float = 0) -> Engine:
    """An engine for ``url``; on PostgreSQL with the connect timeouts, and with
    ``statement_timeout`` seconds for each statement (0: none, as for migrations)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if not url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    connect_timeout = get_settings().database_connect_timeout_seconds
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=connect_timeout,
        connect_args=_connect_args(connect_timeout),
    )
    if statement_timeout > 0:
        event.listen(engine, "do_connect", _with_statement_timeout(statement_timeout))
    return engine


def _connect_args(connect_timeout: float) -> dict[str, Any]:
    """libpq's connection parameters, but the statement timeout."""
    return {
        "connect_timeout": connect_timeout,
        # An idle pooled connection to a host that vanished is found and dropped.
        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
        "keepalives_count": 3,
    }


def _with_option(options: str | None, statement_timeout: float) -> str:
    """libpq's ``options`` with the statement timeout added to any the URL gives, never
    replacing them."""
    return f"{options or ''} -c statement_timeout={round(statement_timeout * 1000)}".strip()


def _with_statement_timeout(seconds: float) -> Any:
    def connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        cparams["options"] = _with_option(cparams.get("options"), seconds)
        if dialect.driver != "psycopg":
            return None  # the driver's own connect, with the server's limit only
        connection = _DeadlineConnection.connect(*cargs, **cparams)
        connection.answer_timeout = seconds + CANCEL_MARGIN
        return connection

    return connect


def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    url = url or settings.resolved_database_url()
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = make_engine(url, statement_timeout=_process_timeout())
    return engine


def _process_timeout() -> float:
    """This process's statement timeout (:func:`use_statement_timeout`), in seconds."""
    return (_statement_timeout[0] if _statement_timeout
            else get_settings().database_statement_timeout_seconds)


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().resolved_database_url()
    key = (os.getpid(), url)
    factory = _sessionmakers.get(key)
    if factory is None:
        factory = _sessionmakers[key] = sessionmaker(get_engine(url), expire_on_commit=False)
    return factory


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _sessionmakers.clear()


class HeldConnection:
    """One connection held from one use to the next, for a caller that writes small groups back
    to back (mail intake's group commit): no pool checkout, pre-ping and reset a group, and on
    PostgreSQL no BEGIN and COMMIT round trips either, as its connection commits each
    statement by itself. So a caller's writes must each be one statement (reads may follow);
    on SQLite a use is one transaction. A use gets the Connection itself: through an ORM session
    on it, a small group's commit cost its caller 1.5 to 3 times the CPU (bench/README.md).

    A connection left idle for ``idle`` seconds goes back to the pool, and the next use takes
    one again (pinged there, as :func:`session_scope`'s are): so a database restarted during
    a quiet spell costs nothing, one restarted under load fails the group under way, as a
    commit would. Any error drops the connection. Uses take turns (a lock). One instance a
    process is meant to serve all its uses: each holds a connection until its next use.
    """

    def __init__(self, idle: float = 10.0, url: str | None = None) -> None:
        self._idle = idle
        self._url = url
        self._lock = threading.Lock()
        self._held: tuple[Engine, Connection] | None = None
        self._used = 0.0

    @contextmanager
    def __call__(self) -> Iterator[Connection]:
        with self._lock:
            connection = self._connection()
            try:
                with connection.begin():
                    yield connection
            except BaseException:
                self._held = None
                connection.invalidate()  # its state is unknown: never used again
                connection.close()
                raise
            self._used = time.monotonic()

    def close(self) -> None:
        """Give the connection back, if one is held (at the process's exit)."""
        with self._lock:
            if self._held is not None:
                self._held[1].close()
                self._held = None

    def _connection(self) -> Connection:
        engine = get_engine(self._url)
        if self._held is not None and (self._held[0] is not engine  # dispose_engines, a fork
                                       or time.monotonic() - self._used > self._idle):
            self._held[1].close()
            self._held = None
        if self._held is None:
            connection = engine.connect()
            if engine.dialect.name == "postgresql":
                connection.execution_options(isolation_level="AUTOCOMMIT")
            self._held = (engine, connection)
        return self._held[1]


def sqlalchemy_error(exc: psycopg.Error, statement: str | None = None,
                     params: Any = None) -> StatementError:
    """psycopg's error as SQLAlchemy's, for what goes to psycopg itself: an unreachable database
    is SQLAlchemy's OperationalError (:func:`database_unreachable`), a refused row its
    IntegrityError, as through an engine."""
    return DBAPIError.instance(statement, params, exc, psycopg.Error, hide_parameters=True)


@lru_cache(maxsize=8)
def _libpq_params(url: str) -> dict[str, Any] | None:
    """psycopg's connection parameters for ``url`` as SQLAlchemy makes them for an engine (its
    query's parameters, several hosts, quoted names), when it names PostgreSQL through psycopg
    on a loop psycopg can wait on (not Windows' default one, which it refuses); else None."""
    parsed = make_url(url)
    if parsed.drivername != "postgresql+psycopg" or sys.platform == "win32":
        return None
    _args, params = parsed.get_dialect()().create_connect_args(parsed)
    return dict(params)


class LoopConnection:
    """:class:`HeldConnection` for a caller on an event loop (the SMTP listener's group commit),
    on PostgreSQL through psycopg (:meth:`serves`): one psycopg AsyncConnection held from one
    use to the next, each statement committing by itself. The loop waits for the database
    itself: handing each group to a thread and its answer back cost the listener about a
    quarter of its CPU a message (the two threads took turns on the GIL), and lengthened every
    session's wait for its 250 (bench/README.md, session 15).

    As HeldConnection's: unused for ``idle`` seconds, it is closed, and the next use connects
    anew (a database restarted during a quiet spell costs nothing); any error closes it (the
    use fails: one restarted under load fails the group under way). Connecting has the connect
    timeout; each statement has the process's statement timeout on the server, and as long
    (plus CANCEL_MARGIN) on the loop, whatever the server does (a black-holed database:
    :class:`_DeadlineAsyncConnection`). Errors come out as SQLAlchemy's
    (:func:`sqlalchemy_error`). Uses on its loop take turns (a lock); it serves one loop at a
    time (a use on another loop replaces the connection: a new loop once the old one ended).
    """

    def __init__(self, idle: float = 10.0, url: str | None = None) -> None:
        self._idle = idle
        self._url = url
        # The connection, the URL and the loop it was made for.
        self._held: tuple[psycopg.AsyncConnection[Any], str, asyncio.AbstractEventLoop] | None \
            = None
        self._used = 0.0
        self._turns: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def serves(self) -> bool:
        """Whether the database is PostgreSQL through psycopg (else its caller uses a
        :class:`HeldConnection` in a thread: SQLite has no asynchronous driver here)."""
        return _libpq_params(self._resolved_url()) is not None

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        loop = asyncio.get_running_loop()
        if self._turns is None or self._turns[0] is not loop:
            self._turns = (loop, asyncio.Lock())
        async with self._turns[1]:
            try:
                yield await self._connection()
            except BaseException as exc:
                self.close()  # its state is unknown: never used again
                if isinstance(exc, psycopg.Error):  # not through dialect's, which converts its own
                    raise sqlalchemy_error(exc) from exc
                raise
            self._used = time.monotonic()

    def close(self) -> None:
        """Close the connection, if one is held (at once: closing sends nothing the loop must
        wait for)."""
        if self._held is not None:
            self._held[0].pgconn.finish()
            self._held = None

    def _resolved_url(self) -> str:
        return self._url or get_settings().resolved_database_url()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        url, loop = self._resolved_url(), asyncio.get_running_loop()
        if self._held is not None and (
                self._held[1:] != (url, loop) or time.monotonic() - self._used > self._idle):
            self.close()
        if self._held is None:
            given = _libpq_params(url)
            if given is None:
                raise ValueError(f"LoopConnection serves PostgreSQL through psycopg, not {url!r}")
            params = {**given, **_connect_args(get_settings().database_connect_timeout_seconds)}
            timeout = _process_timeout()
            if timeout > 0:
                params["options"] = _with_option(params.get("options"), timeout)
            connection = await _DeadlineAsyncConnection.connect(autocommit=True, **params)
            if timeout > 0:
                connection.answer_timeout = timeout + CANCEL_MARGIN
            self._held = (connection, url, loop)
        return self._held[0]
