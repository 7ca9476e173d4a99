"""The SQL of processing events (the rules: shared/transactions/service.py): the claim of the
transaction rows, the reads the rules need, the writes of requests, notes, the transactions'
ends and their notification deliveries.

No ORM objects on the way (they cost more CPU than the work itself): rows are plain dicts keyed
by column name, written set-based, a few statements a run whatever its size. The statements are
built from the models' table metadata (shared/db/dialect.py: one statement over a JSON array on
PostgreSQL, executemany on SQLite), so a column added to a model is written as soon as the rows
carry it.

Once, whatever the number of deliveries (DESIGN 4.5): :func:`claim` inserts the transaction rows
with ``ON CONFLICT DO NOTHING`` and returns only those this run inserted. On PostgreSQL the second
of two concurrent inserters waits on the first one's row locks, then skips.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Result, Select, select, update
from sqlalchemy.orm import Session

from shared.db import dialect
from shared.db.models import EventDefinition, Note, NotificationDelivery, Request, Transaction
from shared.requests.matching import CLOSED_STATUSES, UPDATABLE, WINDOW
from shared.transactions.schemas import EventBatch

_TRANSID = ("transid",)


def claim(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert the transaction rows; returns the transids this run owns (those it inserted)."""
    return {transid for transid, in dialect.insert_rows(
        session, Transaction, rows, returning=_TRANSID, skip_conflicts_on=_TRANSID)}


def definition(session: Session, account_id: str, evtid: str) -> EventDefinition | None:
    return session.scalars(select(EventDefinition).where(
        EventDefinition.account_id == account_id, EventDefinition.evtid == evtid,
    )).first()


def lock_match_keys(session: Session, keys: Collection[str]) -> None:
    """Hold every match key until commit (DESIGN 4.4): a storm spread over many worker
    processes finds, for each key, either nothing (and one run creates the request) or the
    request that run committed. On SQLite, call it after the run's first write (:func:`claim`,
    or the ``UPDATE`` of a mail run's take): that write is the lock (shared/db/dialect.py
    ``lock``)."""
    # 64-bit lock ids from the (already random) hex digests.
    dialect.lock(session, sorted({int(key[:15], 16) for key in keys}))


def open_requests_query(accounts: set[str], keys: set[str], now: datetime, *,
                        postgres: bool) -> Select[Any]:
    """The open requests created within the window on any of the keys, newest first: their id,
    match key and updatable columns.

    A key already names its account; the accounts are there for the index, which leads with
    them (ix_requests_match): without them a full database is read from end to end.
    """
    return (
        select(Request.id, Request.match_key, *(getattr(Request, name) for name in UPDATABLE))
        .where(
            dialect.one_of(Request.account_id, accounts, postgres=postgres),
            dialect.one_of(Request.match_key, keys, postgres=postgres),
            Request.status.not_in(CLOSED_STATUSES),
            Request.created_at >= now - WINDOW,
        ).order_by(Request.created_at.desc(), Request.id.desc())
    )


def open_requests(
    session: Session, accounts: set[str], keys: set[str], now: datetime
) -> Result[*tuple[Any, ...]]:
    return session.execute(open_requests_query(accounts, keys, now,
                                               postgres=dialect.is_postgres(session)))


def note_hashes(session: Session, request_ids: Collection[int]) -> Result[int, str]:
    """The text hash of every note of the requests: (request id, hash) each."""
    return session.execute(
        select(Note.request_id, Note.text_hash).where(dialect.one_of(
            Note.request_id, request_ids, postgres=dialect.is_postgres(session))))


def insert_requests(session: Session, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """Insert the requests, at most one a match key; returns (id, match key) of each."""
    return [(id_, key) for id_, key in dialect.insert_rows(
        session, Request, rows, returning=("id", "match_key"))]


def update_requests(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Update requests by id; the rows may set different columns."""
    # Grouped by the set of columns a row sets, each group as executemany.
    session.execute(update(Request), rows)


def insert_notes(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    dialect.insert_rows(session, Note, rows)


def finish(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """End the transaction rows: status, outcome, error and completion time, by transid."""
    dialect.update_rows(session, Transaction, rows)


def insert_finished(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert transaction rows already ended (a run that did not need to :func:`claim` them)."""
    dialect.insert_rows(session, Transaction, rows)


def insert_deliveries(session: Session, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert the notification deliveries; returns their ids."""
    return [id_ for id_, in dialect.insert_rows(
        session, NotificationDelivery, rows, returning=("id",))]


def storable(text: str) -> str:
    """``text`` as every database can store it."""
    # PostgreSQL text holds no NUL, and a lone surrogate cannot be encoded at all.
    return text.replace("\x00", "").encode("utf-8", "replace").decode()


def recordable(batch: EventBatch) -> EventBatch:
    """The batch with its text made storable whatever it holds, cut to its columns' lengths."""
    def text(value: str | None, limit: int | None = None) -> str | None:
        return None if value is None else storable(value)[:limit]

    events = [event.model_copy(update={
        "evtid": text(event.evtid, Transaction.evtid.type.length),
        "correlationid": text(event.correlationid, Transaction.correlationid.type.length),
        "parameters": {storable(name): text(value) for name, value in event.parameters.items()},
        "notifyurl": text(event.notifyurl),
    }) for event in batch.events]
    return batch.model_copy(update={"notifyurl": text(batch.notifyurl), "events": events})
