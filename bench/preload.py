"""A database as it looks on day 30: ``--preload N`` for ``bench.e2e``.

:func:`load` bulk-loads N finished transactions of the demo account, spread evenly over the
retention period (set-based ``INSERT ... SELECT generate_series``, a chunk a transaction), with
what they made: one request in ten events is new (the storm's share of distinct events, each
with its note), the other events updated one; one transaction in ten notified a URL (a
delivered delivery and its attempt). Requests created within the last 24 hours are open, the
matching window's candidates; older ones are completed. Every preloaded row has a match key of
its own, so the bench's events never match one, but every index the hot path uses is full.

:func:`storage` reads each table's size per row (heap, TOAST and indexes), :func:`explain`
checks that the statements on the hot path and the read API use an index at that size, and
:func:`purge_profile` times a retention purge of the older half.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from shared.retention.service import Purged

CHUNK = 100_000
NEW_REQUEST_EVERY = 10  # one event in ten makes a request (a storm's distinct share)
NOTIFY_EVERY = 10  # one transaction in ten had a notify URL
TABLES = ("transactions", "requests", "notes", "notification_deliveries",
          "notification_attempts")

_REQUESTS = """
WITH made AS (
  INSERT INTO requests (account_id, subject, category, impact, status, source, source_id,
                        "references", match_key, created_at, updated_at)
  SELECT 'wdc', 'Server srvp' || i || ' down', 'incident', 'low',
         CASE WHEN at > now() - interval '24 hours' THEN 'assigned' ELSE 'completed' END,
         'nagios', 'p' || i, '{}', md5('preload' || i), at, at
  FROM (SELECT i, now() - (%(period)s * random()) AS at
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
        WHERE i %% %(every)s = 0) AS s
  RETURNING id, created_at, source_id
)
INSERT INTO notes (request_id, text, text_hash, internal, created_at)
SELECT id, 'Server ' || source_id || ' is down: PING CRITICAL - Packet loss = 100%%',
       md5(source_id), false, created_at FROM made
"""

_TRANSACTIONS = """
INSERT INTO transactions (transid, channel, account_id, evtid, correlationid, parameters,
                          notifyurl, received_at, status, outcome, created_at, completed_at)
SELECT md5('preload' || i), 'webex', 'wdc', 'server-down', 'e' || i,
       json_build_object('host', 'srvp' || i, 'subject', 'Server srvp' || i || ' down',
                         'source', 'nagios', 'sourceID', 'p' || i, 'ci', 'SRVP' || i),
       CASE WHEN i %% %(notify)s = 1 THEN 'https://hooks.example.com/eventdesk/notify' END,
       at, 'completed',
       json_build_object('action', CASE WHEN i %% %(every)s = 0 THEN 'created' ELSE 'updated'
                         END, 'request_id', i / %(every)s, 'match', 'ci'),
       at, at + interval '80 milliseconds'
FROM (SELECT i, now() - (%(period)s * random()) AS at
      FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i) AS s
"""

_DELIVERIES = """
WITH sent AS (
  INSERT INTO notification_deliveries (transid, account_id, url, message_id, payload, status,
                                       attempts, created_at, updated_at, host, completed_at,
                                       schedule_offset)
  SELECT t.transid, t.account_id, t.notifyurl, 'msg_' || md5('m' || t.transid),
         json_build_object('transid', t.transid, 'correlationid', t.correlationid,
                           'evtid', t.evtid, 'status', 'completed', 'code', '1000',
                           'description', 'Completed', 'outcome', t.outcome,
                           'timestamp', t.completed_at),
         'delivered', 1, t.completed_at, t.completed_at, 'hooks.example.com',
         t.completed_at, 0
  FROM transactions AS t
  WHERE t.transid = ANY(ARRAY(SELECT md5('preload' || i)
                              FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
                              WHERE i %% %(notify)s = 1))
  RETURNING id, completed_at
)
INSERT INTO notification_attempts (delivery_id, attempted_at, status_code, duration_ms, number,
                                   verdict, address)
SELECT id, completed_at, 200, 35, 1, 'delivered', '203.0.113.10' FROM sent
"""


@dataclass(frozen=True)
class Loaded:
    transactions: int
    seconds: float


def load(conn: psycopg.Connection[Any], count: int, period: timedelta) -> Loaded:
    """Preload ``count`` finished transactions over ``period`` (autocommit: a chunk a
    statement), then VACUUM ANALYZE, as autovacuum would have by day 30."""
    started = time.monotonic()
    for first in range(1, count + 1, CHUNK):
        values = {"first": first, "last": min(count, first + CHUNK - 1), "period": period,
                  "every": NEW_REQUEST_EVERY, "notify": NOTIFY_EVERY}
        for statement in (_REQUESTS, _TRANSACTIONS, _DELIVERIES):
            conn.execute(statement, values)
    for table in TABLES:
        conn.execute(f"VACUUM ANALYZE {table}")
    return Loaded(count, time.monotonic() - started)


@dataclass(frozen=True)
class TableSize:
    rows: int
    total_bytes: int  # heap, TOAST and every index

    @property
    def bytes_per_row(self) -> float:
        return self.total_bytes / self.rows if self.rows else 0.0


def storage(conn: psycopg.Connection[Any]) -> dict[str, TableSize]:
    sizes = {}
    for table in TABLES:
        row = conn.execute(
            f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}").fetchone()
        assert row is not None
        sizes[table] = TableSize(int(row[0]), int(row[1]))
    return sizes


@dataclass(frozen=True)
class Plan:
    name: str
    uses_index: bool
    scans: list[str]  # each scan node: its type and relation (index)
    ms: float  # EXPLAIN ANALYZE's execution time


def explain(conn: psycopg.Connection[Any], name: str, sql: str) -> Plan:
    """EXPLAIN ANALYZE one statement (in a transaction rolled back: writes leave no trace)."""
    with conn.transaction(force_rollback=True):
        row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchone()
    assert row is not None
    top = row[0][0]
    scans: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        kind = node["Node Type"]
        if node.get("Conflict Arbiter Indexes"):
            scans.append(f"conflict arbiter {', '.join(node['Conflict Arbiter Indexes'])}")
        if "Scan" in kind:
            where = node.get("Index Name") or node.get("Relation Name") or ""
            scans.append(f"{kind} {where}".strip())
        for child in node.get("Plans", []):
            walk(child)

    walk(top["Plan"])
    big = [scan for scan in scans if scan.startswith("Seq Scan")
           and any(scan.endswith(table) for table in TABLES)]
    return Plan(name, not big, scans, float(top["Execution Time"]))


def hot_statements(now: datetime) -> dict[str, str]:
    """The statements that must stay fast on a full database, as the code builds them."""
    from sqlalchemy import ClauseElement, select
    from sqlalchemy.dialects import postgresql

    from shared.db.dialect import json_insert, rows_json
    from shared.db.models import NotificationDelivery, Transaction
    from shared.requests.views import RequestFilter, notes_query, requests_query
    from shared.transactions.store import open_requests_query

    def sql(query: ClauseElement) -> str:
        return str(query.compile(dialect=postgresql.psycopg.dialect(),  # type: ignore[no-untyped-call]
                                 compile_kwargs={"literal_binds": True}))

    row = {"transid": "0" * 32, "channel": "webex", "account_id": "wdc", "parameters": {},
           "received_at": now, "status": "processing", "created_at": now}
    # The claim as shared/transactions/store.py makes it.
    claim_sql = str(json_insert(Transaction, tuple(row), ("transid",), ("transid",)))
    claim_rows = rows_json(Transaction, [row])
    return {
        "matching (open requests of 3 keys, 24 h)": sql(open_requests_query(
            {"wdc"}, {"a" * 64, "b" * 64, "c" * 64}, now, postgres=True)),
        "claim (insert the transactions)": claim_sql.replace(":rows", f"'{claim_rows}'"),
        "GET /v1/transactions/<transid>": sql(
            select(Transaction).where(Transaction.transid == "p" * 32)),
        "  its delivery": sql(select(NotificationDelivery).where(
            NotificationDelivery.transid == "p" * 32)),
        "GET /v1/requests?source=&sourceID=": sql(requests_query(
            "wdc", RequestFilter(source="nagios", source_id="p500")).limit(25)),
        "GET /v1/requests/<id>/notes": sql(notes_query(500).limit(25)),
    }


def purge_profile(url: str, older_than: timedelta) -> Purged:
    from shared.retention.rules import Horizon
    from shared.retention.service import purge

    return purge(Horizon.at(datetime.now(UTC), older_than), database_url=url)
