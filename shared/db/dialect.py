"""What PostgreSQL and SQLite do differently in the statements that write, in one place.

PostgreSQL is the throughput target (DESIGN 2, "Throughput design"): many rows go as one
statement over a JSON array of them (``json_to_recordset``), whose columns are named and typed
from the table's metadata, so a column added to a model needs no edit here or in a store. SQLite,
the embedded default, takes the same rows as executemany: a statement that stays the same for
every batch, so it is compiled once. Intake's group commit of a few raw mails
(:func:`insert_few`) goes to psycopg itself, as a VALUES list of a parameter a value.

PostgreSQL de-escapes every string of the array, and a ``\\u0000`` fails the statement (and with
it every row of the run). So the value of a JSON column marked ``ANY_TEXT`` (shared/db/models.py:
it may hold a NUL) travels as its JSON text, cast back in the statement; the other JSON columns'
values, built by us from checked text, travel nested, which costs less. A binary column's bytes
travel as base64 text, decoded in the statement.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from functools import cache
from typing import Any, cast

import orjson
import psycopg
from sqlalchemy import (
    JSON,
    ColumnElement,
    LargeBinary,
    String,
    Table,
    TextClause,
    all_,
    any_,
    bindparam,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from shared.db.engine import sqlalchemy_error
from shared.db.models import ANY_TEXT, Base

# A column of a table, or a mapped class's attribute for one.
Column = ColumnElement[Any] | QueryableAttribute[Any]
# What runs a statement: an ORM session, or a connection where none is needed (mail intake's
# group commit: shared/db/engine.HeldConnection).
Executor = Session | Connection
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]
# What compiles a statement for psycopg itself (its placeholders: %(name)s).
_PSYCOPG = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
_quote = _PG.identifier_preparer.quote
# One encoder for every value: json.dumps with options makes a new one each call.
_compact = json.JSONEncoder(separators=(",", ":")).encode
# Values at most that insert_few sends as one VALUES list (5 mails of 9 columns): psycopg
# converts a query of more parameters anew at every execution, which costs more than the JSON
# array saves (bench/README.md, session 10). tests/test_compat.py holds psycopg to it.
FEW_PARAMETERS = 50


def is_postgres(executor: Executor) -> bool:
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    return bind.dialect.name == "postgresql"


def one_of(column: Column, values: Collection[Any], *, postgres: bool
           ) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``column = ANY(:array)``, one parameter for any
    number of values. An IN list is a placeholder a value: each length of list is a statement
    of its own to expand (SQLAlchemy), to convert (psycopg, which stops caching long ones) and
    to parse and plan (PostgreSQL), and is never used often enough to be prepared. The array's
    is one text for every run."""
    if postgres:
        return column == any_(_array(column, values))
    return column.in_(values)


def none_of(column: Column, values: Collection[Any], *, postgres: bool
            ) -> ColumnElement[bool]:
    """``column NOT IN values`` (``column <> ALL(:array)`` on PostgreSQL: :func:`one_of`)."""
    if postgres:
        return column != all_(_array(column, values))
    return column.not_in(values)


def _array(column: Column, values: Collection[Any]) -> BindParameter[Any]:
    # A cast to varchar(n)[] would cut a longer value to a prefix that may match: none for text.
    kind = String() if isinstance(column.type, String) else column.type
    return bindparam(None, list(values), type_=postgresql.ARRAY(kind))


def insert(session: Session, model: type[Base]) -> postgresql.Insert | sqlite.Insert:
    """The dialect's ``INSERT`` of ``model``: the one with the ``ON CONFLICT`` clauses."""
    return (postgresql.insert if is_postgres(session) else sqlite.insert)(model)


def lock(session: Session, ids: Collection[int]) -> None:
    """Take a transaction-scoped advisory lock on each of the 64-bit ``ids``, in their order, so
    that two transactions taking several never wait on each other in a circle.

    SQLite needs none, provided the transaction has written already: its first write made it the
    only writer until it commits.
    """
    if ids and is_postgres(session):
        session.execute(
            text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:ids AS bigint[])) AS k"),
            {"ids": list(ids)},
        )


def insert_rows(
    executor: Executor, model: type[Base], rows: Sequence[dict[str, Any]], *,
    returning: tuple[str, ...] = (), skip_conflicts_on: tuple[str, ...] = (),
) -> list[tuple[Any, ...]]:
    """Insert the rows (all with the same keys) in one statement; returns the ``returning``
    columns of each row inserted, in no particular order. A row that conflicts with one stored
    on the ``skip_conflicts_on`` columns is skipped (``ON CONFLICT DO NOTHING``)."""
    if is_postgres(executor):
        statement = json_insert(model, tuple(rows[0]), returning, skip_conflicts_on)
        result = executor.execute(statement, {"rows": rows_json(model, rows)})
        return [tuple(row) for row in result] if returning else []
    lite = sqlite.insert(model)
    if skip_conflicts_on:
        lite = lite.on_conflict_do_nothing(index_elements=list(skip_conflicts_on))
    if not returning:
        executor.execute(lite, rows)
        return []
    columns = _table(model).c
    return [tuple(row) for row in executor.execute(
        lite.returning(*(columns[name] for name in returning)), rows)]


def insert_few(
    executor: Executor, model: type[Base], rows: Sequence[dict[str, Any]], *,
    returning: tuple[str, ...] = (), skip_conflicts_on: tuple[str, ...] = (),
) -> list[tuple[Any, ...]]:
    """:func:`insert_rows` for a few rows of plain values (text, numbers, bytes, aware
    datetimes; no JSON column) through a Connection that its caller drops on any error
    (intake's HeldConnection). On PostgreSQL with psycopg, up to FEW_PARAMETERS values go to
    psycopg itself, as one VALUES statement with a parameter a value (the bytes as bytes): the
    JSON array's base64 and JSON text, and SQLAlchemy's execution around it, were most of the
    CPU a small group cost (bench/README.md, session 10). psycopg's errors come out as
    SQLAlchemy's (an unreachable database as its OperationalError), as from insert_rows.
    Anything else (more values, SQLite, an ORM Session, whose rollback must know of an
    error) goes through insert_rows."""
    driver = None if isinstance(executor, Session) or len(rows) * len(rows[0]) > FEW_PARAMETERS \
        else executor.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        return insert_rows(executor, model, rows, returning=returning,
                           skip_conflicts_on=skip_conflicts_on)
    statement, values = _psycopg_insert(model, rows, returning, skip_conflicts_on)
    try:
        with driver.cursor() as cursor:
            cursor.execute(statement, values)
            return [tuple(row) for row in cursor.fetchall()] if returning else []
    except psycopg.Error as exc:
        raise sqlalchemy_error(exc, statement, values) from exc


async def insert_few_async(
    connection: psycopg.AsyncConnection[Any], model: type[Base], rows: Sequence[dict[str, Any]],
    *, returning: tuple[str, ...] = (), skip_conflicts_on: tuple[str, ...] = (),
) -> list[tuple[Any, ...]]:
    """:func:`insert_few` on an event loop, through psycopg's AsyncConnection (PostgreSQL only:
    shared/db/engine.LoopConnection): the same statement for a few rows, and for more the JSON
    array's of :func:`insert_rows`."""
    statement, values = _psycopg_insert(model, rows, returning, skip_conflicts_on)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(statement, values)
            return [tuple(row) for row in await cursor.fetchall()] if returning else []
    except psycopg.Error as exc:
        raise sqlalchemy_error(exc, statement, values) from exc


async def fetch_async(connection: psycopg.AsyncConnection[Any], query: ClauseElement
                      ) -> list[tuple[Any, ...]]:
    """The rows of ``query`` (a Core statement whose parameters need no conversion: text,
    numbers) through psycopg's AsyncConnection."""
    compiled = query.compile(dialect=_PSYCOPG)
    statement = str(compiled)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(statement, compiled.params)
            return [tuple(row) for row in await cursor.fetchall()]
    except psycopg.Error as exc:
        raise sqlalchemy_error(exc, statement, compiled.params) from exc


def _psycopg_insert(
    model: type[Base], rows: Sequence[dict[str, Any]], returning: tuple[str, ...],
    skip_conflicts_on: tuple[str, ...],
) -> tuple[str, Any]:
    """The ``INSERT`` of the rows as psycopg takes it, and its parameters: up to FEW_PARAMETERS
    values a VALUES list, more the JSON array."""
    names = tuple(rows[0])
    if len(rows) * len(names) > FEW_PARAMETERS:
        return _psycopg_json_insert(model, names, returning, skip_conflicts_on), {
            "rows": rows_json(model, rows)}
    return (_values_insert(model, names, len(rows), returning, skip_conflicts_on),
            [_plain(row[name]) for row in rows for name in names])


@cache
def _psycopg_json_insert(model: type[Base], names: tuple[str, ...], returning: tuple[str, ...],
                         skip_conflicts_on: tuple[str, ...]) -> str:
    return str(json_insert(model, names, returning, skip_conflicts_on).compile(dialect=_PSYCOPG))


def _plain(value: object) -> object:
    """A value as :func:`insert_few` gives it to psycopg."""
    if isinstance(value, datetime) and value.tzinfo is None:
        raise TypeError(f"naive datetime {value!r} given to a UTC column")
    if isinstance(value, dict | list):
        raise TypeError("insert_few takes plain values; JSON goes through insert_rows")
    return value


@cache
def _values_insert(
    model: type[Base], names: tuple[str, ...], count: int, returning: tuple[str, ...] = (),
    skip_conflicts_on: tuple[str, ...] = (),
) -> str:
    """PostgreSQL's ``INSERT`` of ``count`` rows into the columns ``names``, as psycopg takes it:
    a placeholder a value (an INSERT's VALUES list takes each value as its column's type)."""
    row = "(" + ", ".join(["%s"] * len(names)) + ")"
    return _insert(_table(model), names, "VALUES " + ", ".join([row] * count), returning,
                   skip_conflicts_on)


def update_rows(session: Session, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """Update the stored rows named by each row's primary key with its other values; every row
    gives the same columns."""
    if is_postgres(session):
        session.execute(json_update(model, tuple(rows[0])), {"rows": rows_json(model, rows)})
    else:  # by primary key, as executemany
        session.execute(update(model), rows)


@cache
def json_insert(
    model: type[Base], names: tuple[str, ...], returning: tuple[str, ...] = (),
    skip_conflicts_on: tuple[str, ...] = (),
) -> TextClause:
    """PostgreSQL's ``INSERT`` of the rows given as the JSON array ``:rows`` (:func:`rows_json`)
    into the columns ``names``."""
    table = _table(model)
    selected = ", ".join(_value(table, name) for name in names)
    rows = f"SELECT {selected} FROM {_recordset(table, names)}"  # noqa: S608 - the metadata's
    return text(_insert(table, names, rows, returning, skip_conflicts_on))


def _insert(table: Table, names: Sequence[str], rows: str, returning: tuple[str, ...],
            skip_conflicts_on: tuple[str, ...]) -> str:
    """``INSERT`` of ``rows`` (a query or a VALUES list) into the columns ``names``."""
    columns = ", ".join(_quote(name) for name in names)
    conflict = (f" ON CONFLICT ({', '.join(map(_quote, skip_conflicts_on))}) DO NOTHING"
                if skip_conflicts_on else "")
    tail = f" RETURNING {', '.join(map(_quote, returning))}" if returning else ""
    # The table and column names are the metadata's; the values are parameters.
    return f"INSERT INTO {_quote(table.name)} ({columns}) {rows}{conflict}{tail}"


@cache
def json_update(model: type[Base], names: tuple[str, ...]) -> TextClause:
    """PostgreSQL's ``UPDATE`` of the rows given as the JSON array ``:rows``, found by their
    primary key, setting the other columns of ``names``."""
    table = _table(model)
    keys = [column.name for column in table.primary_key.columns]
    values = [name for name in names if name not in keys]
    assignments = ", ".join(f"{_quote(name)} = {_value(table, name)}" for name in values)
    found = " AND ".join(f"t.{_quote(name)} = r.{_quote(name)}" for name in keys)
    return text(
        f"UPDATE {_quote(table.name)} AS t SET {assignments} "  # noqa: S608
        f"FROM {_recordset(table, names)} WHERE {found}"
    )


def rows_json(model: type[Base], rows: Sequence[dict[str, Any]]) -> str:
    """The rows as the JSON array the statements of :func:`json_insert` and :func:`json_update`
    take: ``ANY_TEXT`` columns' values as their JSON text, binary columns' as base64 (None
    stays NULL)."""
    table = _table(model)
    carried: dict[str, Callable[[Any], str]] = {
        name: _compact if _as_text(table, name) else _base64 for name in rows[0]
        if _as_text(table, name) or _binary(table, name)}
    if carried:
        rows = [row | {name: None if row[name] is None else encode(row[name])
                       for name, encode in carried.items()} for row in rows]
    # An aware datetime's isoformat is not free and most rows share theirs (the run's ``now``,
    # a batch's received_at): each is rendered once. Equal instants may share
    # one text, as they are one timestamptz.
    rendered: dict[datetime, str] = {}

    def value(item: object) -> str:
        # Naive datetimes are refused, as the UTC columns refuse them.
        if not isinstance(item, datetime) or item.tzinfo is None:
            raise TypeError(f"no JSON form for {item!r}")
        found = rendered.get(item)
        if found is None:
            found = rendered[item] = item.isoformat()
        return found

    try:
        # The datetimes through ``value`` too, which refuses naive ones as the columns do.
        return orjson.dumps(rows, default=value, option=orjson.OPT_PASSTHROUGH_DATETIME
                            | orjson.OPT_PASSTHROUGH_DATACLASS).decode()
    except orjson.JSONEncodeError:
        # What orjson refuses and the stdlib writes: a lone surrogate (the statement then fails
        # on it, and the caller isolates the row that holds it, as before), an integer beyond
        # 64 bits, a key that is not a str, a float subclass, nesting deeper than 254; or what
        # neither can write (the stdlib raises it, as before). Where orjson writes what the
        # stdlib did not: non-ASCII as itself (the same JSON value), a UUID or an Enum as its
        # value (the stdlib raised), NaN as null (the stdlib wrote invalid JSON): no column
        # takes a float, and no row carries a UUID or an Enum.
        return json.dumps(rows, default=value, separators=(",", ":"))


def _table(model: type[Base]) -> Table:
    return cast("Table", model.__table__)


def _recordset(table: Table, names: Sequence[str]) -> str:
    """``:rows`` as the relation ``r`` with the columns ``names``, typed as the table's (an
    ``ANY_TEXT`` column as text: the module docstring)."""
    columns = ", ".join(f"{_quote(name)} {_carried_as(table, name)}" for name in names)
    return f"json_to_recordset(CAST(:rows AS json)) AS r({columns})"


def _value(table: Table, name: str) -> str:
    """Column ``name`` of ``r``, as the table's type."""
    if _as_text(table, name):
        return f"CAST(r.{_quote(name)} AS {table.c[name].type.compile(_PG)})"
    if _binary(table, name):
        return f"decode(r.{_quote(name)}, 'base64')"
    return f"r.{_quote(name)}"


def _base64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def _carried_as(table: Table, name: str) -> str:
    """The type of column ``name``'s values in the JSON array."""
    if _as_text(table, name) or _binary(table, name):
        return "TEXT"
    return str(table.c[name].type.compile(_PG))


def _binary(table: Table, name: str) -> bool:
    return isinstance(table.c[name].type, LargeBinary)


def _as_text(table: Table, name: str) -> bool:
    column = table.c[name]
    return isinstance(column.type, JSON) and bool(column.info.get(ANY_TEXT))
