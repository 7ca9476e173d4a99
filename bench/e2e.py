"""End-to-end benchmark: events posted to the api until every transaction is done, on PostgreSQL.

Run from the repository root::

    python -m bench.e2e [--events 20000] [--scenarios storm,distinct,storm100,distinct100] [--json]
                        [--preload N]
    eventdesk bench e2e ...

Setup: a throwaway PostgreSQL database (created, migrated, loaded with ``shared/records/demo.yaml``,
dropped at the end), the api under gunicorn (the intake benchmark's settings) and a Celery worker
on the ``events`` queue (``--concurrency``, ``--batch-size``), both on Redis database 13 (flushed
before and after), rate limit out of the way. A few warm-up events go through first.

Each scenario POSTs every one of its events exactly once (``wrk`` when installed, else the Python
client; ``--connections`` keep-alive connections), then waits until the ``transactions`` table
holds every accepted event in a final state. The processing tables are emptied between scenarios,
so each starts from the same database. Scenarios, ``--events`` events each:

- ``storm``: server-down events of which 90% repeat a few events (on two CIs: they match the
  request the first one created) and 10% are distinct (each makes its own request); one event a
  request.
- ``distinct``: distinct events only, one a request.
- ``storm100``, ``distinct100``: the same events, 100 a request.

End to end = from the first POST until the last transaction is done. CPU per event is split by
process: api (gunicorn), the worker's consumer (its main process) and pool processes, Redis,
PostgreSQL (the bench database's backends and the server's background processes), the load
generator, and other (the rest of the machine: neighbours, steal, the bench itself).

Baseline, measured in the same run before the stack starts: a standard Celery worker
(``bench/noop_app.py``, one task a message, same concurrency) draining ``--noop-messages`` no-op
messages queued beforehand. eventdesk's end-to-end events/s is shown as a ratio to its drain rate.

With ``--preload N`` the scenarios run twice in the same run: on the empty database, then after
N finished transactions and what they made are bulk-loaded over the retention period
(``bench/preload.py``: a database on day 30), where between scenarios only the scenario's own
rows are removed. The report adds the bytes per row of each table, EXPLAIN ANALYZE of the
matching, the claim and the read API's statements at that size (each must use an index), the
preloaded/empty ratio of e2e events/s (target >= 0.8 for storm and distinct100), and a retention
purge of the older half of the preload (time, rows/s, longest batch).

Targets: >= 1,000 events/s end to end for the storm posted one event a request, >= 3,000 for
100-event bodies. Exit status: 0 even when a target is missed or events are left unprocessed
(reported); non-zero when a server does not start or dies, or PostgreSQL or Redis is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.intake import log
from bench.servers import ServerError
from shared.messaging import EVENTS_QUEUE

if TYPE_CHECKING:
    import psycopg
    import redis

    from bench.loadgen import Target
    from bench.preload import Loaded
    from bench.servers import CeleryWorker, GunicornServer, GunicornSettings, Service

ROOT = Path(__file__).resolve().parent.parent
STORM, DISTINCT = "storm", "distinct"
# name -> (events, events per body)
SCENARIOS = {
    "storm": (STORM, 1), "distinct": (DISTINCT, 1),
    "storm100": (STORM, 100), "distinct100": (DISTINCT, 100),
}
TARGETS = {"storm": 1000.0, "storm100": 3000.0, "distinct100": 3000.0}  # events/s end to end
# The events a storm repeats: (host, CI label). Both CIs are in the demo records, so each CI's
# events match one request (same account, source, service instance and CI).
REPEATS = [("db1", "ABC1234"), ("db2", "ABC1234"), ("db1-standby", "ABC1234"), ("pc23", "CMP00023")]
DISTINCT_EVERY = 10  # in a storm, one event in ten is distinct
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
# Emptied before each scenario (the reference records stay).
# In an order that DELETE can follow too (referencing tables first).
PROCESSING_TABLES = "notification_attempts, notification_deliveries, notes, requests, transactions"
# With a preload, the rows above its highest ids (and transactions received after it) go.
ID_TABLES = ("notification_attempts", "notification_deliveries", "notes", "requests")
# A scenario's transactions: a range of ix_transactions_account_received, not a full count.
SCENARIO_TRANSACTIONS = "account_id IN (SELECT id FROM accounts) AND received_at >= %(since)s"
# Preloaded e2e events/s against empty, for these scenarios (issue 14).
PRELOAD_TARGET = {"storm": 0.8, "distinct100": 0.8}
POLL_S = 0.1  # how often completion is checked: the end-to-end time's resolution
SAMPLE_S = 0.2  # how often RSS is sampled
# The worker's CPU in two: its main process (the consumer: fetches, acknowledges, buffers the
# batches) and its pool processes (run them).
CPU_PARTS = ("api", "consumer", "pool", "redis", "postgres", "loadgen", "other")


# --- the events -----------------------------------------------------------------------------


def storm_event(index: int) -> tuple[dict[str, Any], str | None]:
    """Event ``index`` of a storm, and the CI it matches on (None: a distinct event)."""
    if index % DISTINCT_EVERY == DISTINCT_EVERY - 1:
        return distinct_event(index), None
    host, ci = REPEATS[index % len(REPEATS)]
    return {
        "evtid": "server-down", "correlationid": f"e{index}",
        "parameters": {
            "host": host, "subject": "Server Down", "source": "nagios", "sourceID": "42",
            "ci": ci,
        },
    }, ci


def distinct_event(index: int) -> dict[str, Any]:
    """A server no other event names: its CI label is not in the records, so it matches on its
    subject, which no other event has."""
    host = f"srv{index:06d}"
    return {
        "evtid": "server-down", "correlationid": f"e{index}",
        "parameters": {
            "host": host, "subject": f"Server {host} down", "source": "nagios",
            "sourceID": str(index), "ci": host.upper(),
        },
    }


def scenario_events(kind: str, count: int) -> tuple[list[dict[str, Any]], int]:
    """The scenario's events, and how many requests they must create."""
    if kind == DISTINCT:
        return [distinct_event(i) for i in range(count)], count
    events, cis, distinct = [], set(), 0
    for i in range(count):
        event, ci = storm_event(i)
        events.append(event)
        if ci is None:
            distinct += 1
        else:
            cis.add(ci)
    return events, distinct + len(cis)


def bodies(events: list[dict[str, Any]], per_body: int) -> list[bytes]:
    return [
        json.dumps({"events": events[i : i + per_body]}, separators=(",", ":")).encode()
        for i in range(0, len(events), per_body)
    ]


# --- the figures ----------------------------------------------------------------------------


@dataclass
class Baseline:
    """The no-op Celery worker's drain."""

    messages: int
    seconds: float
    tasks_per_s: float
    worker_rss_peak_mib: float
    worker_cpu_us_per_task: float
    drained: bool


@dataclass
class Figures:
    scenario: str
    events_per_body: int
    events: int  # posted
    bodies: int  # HTTP requests
    answered_200: int
    non_200: dict[str, int]
    errors: int  # socket errors and timeouts of the load generator
    accepted: int  # events in 200 answers
    completed: int  # transactions in a final state (completed, failed, expired)
    # Different events among the transactions: == accepted, or the bench posted one twice.
    distinct_events: int
    failed: int
    post_s: float  # first POST to last answer
    e2e_s: float  # first POST to last transaction done (0: not all done)
    post_events_per_s: float
    e2e_events_per_s: float
    completed_when_posted: int  # done by the time the last answer came
    requests_created: int
    expected_requests: int
    queue_left: int  # messages still in the events queue at the end
    p50_ms: float
    p99_ms: float
    worker_rss_peak_mib: float
    api_rss_peak_mib: float
    cpu_us_per_event: dict[str, float]  # by part (CPU_PARTS)
    target_events_per_s: float | None
    met: bool | None
    vs_noop: float | None  # e2e events/s / the no-op worker's tasks/s

    @property
    def all_done(self) -> bool:
        return self.e2e_s > 0


@dataclass
class Preloaded:
    """What ``--preload`` measured besides the scenarios."""

    transactions: int
    load_s: float
    # table -> (rows, bytes with TOAST and indexes, bytes a row)
    storage: dict[str, tuple[int, int, float]]
    # (statement, uses an index, its scans, execution ms)
    plans: list[tuple[str, bool, list[str], float]]
    purge: dict[str, float] = field(default_factory=dict)

    def table(self, figures: list[Figures]) -> list[str]:
        lines = ["", f"preload: {self.transactions} finished transactions in {self.load_s:.1f} s",
                 f"{'table':<26}{'rows':>11}{'MiB':>9}{'bytes/row':>11}"]
        lines += [f"{table:<26}{rows:>11}{size / 2**20:>9.1f}{per_row:>11.0f}"
                  for table, (rows, size, per_row) in self.storage.items()]
        lines.append("EXPLAIN ANALYZE on the preloaded database:")
        lines += [f"  {'index' if indexed else 'NO INDEX':<9}{ms:>8.3f} ms  {name}: "
                  f"{', '.join(scans) or 'no scan'}" for name, indexed, scans, ms in self.plans]
        empty = {f.scenario: f for f in figures}
        for f in figures:
            before = empty.get(f.scenario.removesuffix(PRELOADED))
            if f.scenario.endswith(PRELOADED) and before is not None and before.all_done \
                    and f.all_done:
                ratio = f.e2e_events_per_s / before.e2e_events_per_s
                target = PRELOAD_TARGET.get(before.scenario)
                verdict = "" if target is None else \
                    f" (target >= {target}: {'met' if ratio >= target else 'MISSED'})"
                lines.append(f"{before.scenario}: preloaded {f.e2e_events_per_s:,.0f} e2e "
                             f"events/s, empty {before.e2e_events_per_s:,.0f}: "
                             f"{ratio:.2f}x{verdict}")
        if self.purge:
            p = self.purge
            lines.append(
                f"purge of the older half: {p['transactions']:.0f} transactions, "
                f"{p['deliveries']:.0f} deliveries, {p['attempts']:.0f} attempts in "
                f"{p['seconds']:.1f} s ({p['transactions'] / max(p['seconds'], 1e-9):,.0f} "
                f"transactions/s), {p['batches']:.0f} batches, the longest "
                f"{p['longest_batch_ms']:.0f} ms")
        return lines


PRELOADED = "+pre"


@dataclass
class Report:
    generator: str
    generator_version: str
    gunicorn: str
    worker: str
    connections: int
    events: int
    cpus: int
    database: str  # the throwaway database, dropped at the end
    baseline: Baseline | None = None
    figures: list[Figures] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    failed: str = ""  # why the run stopped early
    preload: Preloaded | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"load generator: {self.generator} {self.generator_version}".rstrip()
            + f", {self.connections} connections; {self.events} events a scenario",
            f"api: gunicorn {self.gunicorn}; worker: {self.worker}",
        ]
        b = self.baseline
        if b is not None:
            drained = "" if b.drained else " (NOT all drained)"
            lines.append(
                f"baseline: a standard Celery worker drains {b.messages} no-op messages in "
                f"{b.seconds:.2f} s: {b.tasks_per_s:.0f} tasks/s{drained}, "
                f"{b.worker_cpu_us_per_task:.0f} µs CPU/task, "
                f"peak RSS {b.worker_rss_peak_mib:.0f} MiB"
            )
        cpu = " ".join(f"{part:>8}" for part in CPU_PARTS)
        lines += [
            "",
            f"{'':<52}{'events/s':^17}{'':<30} CPU µs per event, by process",
            f"{'scenario':<12} {'ev/req':>6} {'accepted':>8} {'post s':>7} {'e2e s':>7} "
            f"{'post':>8} {'e2e':>8} {'vs noop':>7} {'requests':>8} {'failed':>6} "
            f"{'RSS MiB w/api':>13}  {cpu}",
        ]
        for f in self.figures:
            e2e_s = f"{f.e2e_s:>7.2f}" if f.all_done else f"{'n/a':>7}"
            e2e = f"{f.e2e_events_per_s:>8.0f}" if f.all_done else f"{'n/a':>8}"
            ratio = f"{f.vs_noop:>7.2f}" if f.vs_noop is not None else f"{'-':>7}"
            cpu = " ".join(f"{f.cpu_us_per_event.get(part, 0.0):>8.0f}" for part in CPU_PARTS)
            rss = f"{f.worker_rss_peak_mib:.0f}/{f.api_rss_peak_mib:.0f}"
            lines.append(
                f"{f.scenario:<12} {f.events_per_body:>6} {f.accepted:>8} {f.post_s:>7.2f} "
                f"{e2e_s} {f.post_events_per_s:>8.0f} {e2e} {ratio} {f.requests_created:>8} "
                f"{f.failed:>6} {rss:>13}  {cpu}"
            )
            problems = []
            if f.non_200 or f.errors:
                problems.append(f"non-200: {f.non_200}, socket errors: {f.errors}")
            if not f.all_done:
                problems.append(
                    f"NOT DONE: {f.completed} of {f.accepted} transactions done, "
                    f"{f.queue_left} messages left in the queue"
                )
            if f.distinct_events != f.completed:
                problems.append(f"only {f.distinct_events} different events: the bench posted "
                                "some twice")
            if f.requests_created != f.expected_requests:
                problems.append(f"expected {f.expected_requests} requests")
            if problems:
                lines.append(f"{'':<13}" + "; ".join(problems))
        lines += [
            "post: accepted events / time to post them all; e2e: accepted events / time from the",
            "first POST until the last transaction was done; vs noop: e2e events/s / the no-op",
            "worker's tasks/s; RSS: peak of the worker's and the api's process trees.",
            "",
        ]
        for f in self.figures:
            if f.target_events_per_s is None:
                continue
            label = f"{f.scenario} ({f.events_per_body} event(s) a request) e2e events/s"
            target = f"target >= {f.target_events_per_s:,.0f}"
            if not f.all_done:
                lines.append(f"{label}: n/a, not all done ({target}: MISSED)")
            else:
                verdict = "met" if f.met else "MISSED"
                lines.append(f"{label}: {f.e2e_events_per_s:,.0f} ({target}: {verdict})")
        lines += self.preload.table(self.figures) if self.preload is not None else []
        lines += [f"profile: {path}" for path in self.profiles]
        if self.failed:
            lines.append(f"\nstopped early: {self.failed}")
        return "\n".join(lines)


# --- measuring ------------------------------------------------------------------------------


class Peaks(threading.Thread):
    """Samples the RSS of some services in the background; keeps each one's peak."""

    def __init__(self, services: dict[str, Service]) -> None:
        super().__init__(daemon=True)
        self.services = services
        self.peaks = dict.fromkeys(services, 0.0)
        self._finished = threading.Event()

    def run(self) -> None:
        while True:
            for name, service in self.services.items():
                if not service.exited():
                    self.peaks[name] = max(self.peaks[name], service.rss_mib())
            if self._finished.wait(SAMPLE_S):
                return

    def finish(self) -> dict[str, float]:
        self._finished.set()
        self.join()
        return self.peaks


class Database:
    """The bench's own database: created, migrated, loaded, polled, dropped."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy.engine import make_url

        self.admin_url = admin_url
        self.name = f"eventdesk_bench_{uuid.uuid4().hex[:8]}"
        admin = make_url(admin_url)
        self.url = admin.set(drivername="postgresql+psycopg", database=self.name).render_as_string(
            hide_password=False
        )
        self.plain_url = admin.set(drivername="postgresql", database=self.name).render_as_string(
            hide_password=False
        )
        self._conn: psycopg.Connection[Any] | None = None
        # --preload: the highest preloaded id of each of ID_TABLES, and when the preload ended.
        self.kept: dict[str, int] = {}
        self.preloaded_at: datetime | None = None
        self.since = datetime(1970, 1, 1, tzinfo=UTC)  # when the current scenario began

    def create(self, records: Path) -> None:
        import psycopg

        from shared.db.engine import dispose_engines, session_scope
        from shared.db.migrate import upgrade
        from shared.records.importer import import_records, load_file

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        upgrade(self.url)
        with session_scope(self.url) as session:
            import_records(session, load_file(records))
        dispose_engines()
        self._conn = psycopg.connect(self.plain_url, autocommit=True)

    @property
    def conn(self) -> psycopg.Connection[Any]:
        assert self._conn is not None
        return self._conn

    def scalar(self, sql: str) -> int:
        row = self.conn.execute(sql, {"since": self.since}).fetchone()
        assert row is not None
        return int(row[0])

    def done(self) -> int:
        return self.scalar(f"SELECT count(*) FROM transactions WHERE {SCENARIO_TRANSACTIONS} "
                           "AND status <> 'processing'")

    def empty_processing_tables(self) -> None:
        """Back to the empty database, or to just the preload."""
        self.conn.execute("SET lock_timeout = '10s'")
        if self.preloaded_at is None:
            self.conn.execute(f"TRUNCATE {PROCESSING_TABLES} RESTART IDENTITY CASCADE")
        else:
            for table in ID_TABLES:
                self.conn.execute(f"DELETE FROM {table} WHERE id > %s",
                                  (self.kept[table],))
            self.conn.execute("DELETE FROM transactions WHERE account_id IN "
                              "(SELECT id FROM accounts) AND received_at >= %s",
                              (self.preloaded_at,))
            for table in (*ID_TABLES, "transactions"):
                self.conn.execute(f"VACUUM ANALYZE {table}")
        self.since = datetime.now(UTC)

    def preload(self, count: int, period: timedelta) -> Loaded:
        from bench import preload

        self.empty_processing_tables()
        loaded = preload.load(self.conn, count, period)
        self.kept = {table: self.scalar(f"SELECT coalesce(max(id), 0) FROM {table}")
                     for table in ID_TABLES}
        self.preloaded_at = datetime.now(UTC)
        return loaded

    def requests_created(self) -> int:
        return self.scalar(
            f"SELECT count(*) FROM requests WHERE id > {self.kept.get('requests', 0)}")

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU so far of this database's backends (but the bench's own) and the server's
        background processes (WAL writer, checkpointer...), by pid."""
        from bench.servers import cpu_seconds

        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
            "(datname = %s OR backend_type <> 'client backend')", (self.name,),
        ).fetchall()
        return {int(pid): cpu_seconds(int(pid)) for (pid,) in rows}

    def drop(self, *, keep: bool = False) -> None:
        import psycopg

        from shared.db.engine import dispose_engines

        if self._conn is not None:
            self._conn.close()
        dispose_engines()
        if keep:
            log(f"database {self.name} kept: {self.plain_url}")
            return
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@dataclass
class CpuSnapshot:
    api_s: float
    consumer_s: float
    worker_s: float  # consumer and pool
    redis_s: float
    postgres_s: dict[int, float]  # by pid
    machine_s: float

    @classmethod
    def take(
        cls, api: Service, worker: Service, client: redis.Redis, db: Database
    ) -> CpuSnapshot:
        from bench.intake import machine_cpu_seconds, redis_cpu_seconds
        from bench.servers import cpu_seconds

        return cls(
            api.cpu_seconds(), cpu_seconds(worker.pid), worker.cpu_seconds(),
            redis_cpu_seconds(client), db.cpu_by_pid(), machine_cpu_seconds(),
        )

    def used_since(self, before: CpuSnapshot, loadgen_s: float) -> dict[str, float]:
        """CPU seconds by part between ``before`` and this snapshot."""
        used = {
            "api": self.api_s - before.api_s,
            "consumer": self.consumer_s - before.consumer_s,
            "pool": (self.worker_s - self.consumer_s) - (before.worker_s - before.consumer_s),
            "redis": self.redis_s - before.redis_s,
            "postgres": sum(
                cpu - before.postgres_s.get(pid, 0.0) for pid, cpu in self.postgres_s.items()
            ),
            "loadgen": loadgen_s,
        }
        used["other"] = max(0.0, self.machine_s - before.machine_s - sum(used.values()))
        return used


@contextmanager
def profiled(directory: Path | None, scenario: str, services: dict[str, Service],
             report: Report) -> Iterator[None]:
    """With ``directory``: py-spy records each service (with its children) while in the block."""
    if directory is None:
        yield
        return
    # py-spy (PyPI) installs a binary next to the interpreter.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    binary = shutil.which("py-spy", path=search)
    if binary is None:
        raise ServerError("--profile needs py-spy (pip install py-spy)")
    directory.mkdir(parents=True, exist_ok=True)
    spies = []
    for role, service in services.items():
        out = directory / f"{scenario}-{role}.txt"
        spies.append(subprocess.Popen(
            [binary, "record", "--pid", str(service.pid),
             # --gil: only samples holding the GIL, i.e. running Python, not waiting on I/O.
             "--subprocesses", "--gil", "--rate", "100", "--format", "raw", "--nonblocking",
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        report.profiles.append(str(out))
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def wait_until_done(
    db: Database, expected: int, worker: Service, stall_s: float
) -> tuple[int, float | None]:
    """Poll until ``expected`` transactions are done: (done, when) or (done, None) when nothing
    finished for ``stall_s`` seconds."""
    last, last_change = -1, time.perf_counter()
    while True:
        done = db.done()
        now = time.perf_counter()
        if done >= expected:
            return done, now
        if done != last:
            last, last_change = done, now
        elif now - last_change > stall_s:
            return done, None
        worker.check_alive()
        time.sleep(POLL_S)


# --- running --------------------------------------------------------------------------------


def scenario_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or not set(names) <= set(SCENARIOS):
        raise argparse.ArgumentTypeError(f"not a list of {', '.join(SCENARIOS)}: {text!r}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    summary = (__doc__ or "").strip().splitlines()[:1]
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=" ".join(summary))
    parser.add_argument("--events", type=int, default=20_000, help="events per scenario")
    parser.add_argument(
        "--scenarios", type=scenario_list, default=list(SCENARIOS),
        help=f"comma-separated, of: {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (auto: wrk when installed, else the Python client)")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn workers (gthread)")
    parser.add_argument("--api-threads", type=int, default=8,
                        help="threads per gunicorn worker (8: eventdesk api's default)")
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="messages per events.process batch (default: the setting's)")
    parser.add_argument("--batch-wait", type=float, default=None,
                        help="seconds a batch waits to fill (default: the setting's)")
    parser.add_argument("--noop-messages", type=int, default=5000,
                        help="messages the no-op baseline worker drains (0: no baseline)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help="a Redis database the bench owns: flushed before and after")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server (admin database) to create the bench's on")
    parser.add_argument("--records", type=Path, default=ROOT / "shared" / "records" / "demo.yaml")
    parser.add_argument("--key", default="demo-key", help="the API key sent in the 'key' header")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="give up on a scenario when no event is done for this long")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record each scenario's api and worker with py-spy into DIR "
                        "(slows them down: figures not comparable)")
    parser.add_argument("--keep-database", action="store_true",
                        help="do not drop the database at the end (to look at what was made)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--preload", type=int, default=0, metavar="N",
                        help="run the scenarios again after bulk-loading N finished transactions "
                        "over the retention period (bench/preload.py)")
    args = parser.parse_args(argv)
    if min(args.events, args.connections, args.concurrency, args.api_workers) < 1:
        parser.error("--events, --connections, --concurrency and --api-workers must be >= 1")
    return args


def stack_env(args: argparse.Namespace, db: Database, data_dir: Path) -> dict[str, str]:
    from bench.intake import HUGE

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EVENTDESK_", "BENCH_", "PROMETHEUS_"))}
    env.update(
        EVENTDESK_DATABASE_URL=db.url,
        EVENTDESK_BROKER_URL=args.redis_url,
        EVENTDESK_DATA_DIR=str(data_dir),
        EVENTDESK_SECRET_KEY="bench-secret-key",
        EVENTDESK_RATE_LIMIT_PER_SECOND=HUGE,
        EVENTDESK_RATE_LIMIT_BURST=HUGE,
        EVENTDESK_WORKER_METRICS_PORT="0",  # no exporter: no port to collide on
    )
    if args.batch_size is not None:
        env["EVENTDESK_WORKER_BATCH_SIZE"] = str(args.batch_size)
    if args.batch_wait is not None:
        env["EVENTDESK_WORKER_BATCH_WAIT_SECONDS"] = str(args.batch_wait)
    return env


def noop_baseline(args: argparse.Namespace, client: redis.Redis) -> Baseline:
    """Queue the no-op messages, then time a fresh standard worker draining them."""
    from bench import noop_app
    from bench.servers import CeleryWorker

    client.flushdb()
    noop_app.app.conf.broker_url = args.redis_url
    with noop_app.app.producer_or_acquire() as producer:
        for _ in range(args.noop_messages):
            noop_app.noop.apply_async(producer=producer)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTDESK_", "BENCH_"))}
    env["BENCH_BROKER_URL"] = args.redis_url
    total = args.noop_messages

    def left() -> int:  # queued, or taken but not yet acknowledged (when the task starts)
        return int(client.llen(noop_app.QUEUE)) + int(client.hlen("unacked"))

    with CeleryWorker("noop", "bench.noop_app", noop_app.QUEUE, args.concurrency,
                      env=env) as worker:
        log(f"baseline: a no-op Celery worker drains {total} messages")
        # Timed from its first fetch, so its start-up does not count.
        worker.launch()
        peaks = Peaks({"worker": worker})
        peaks.start()
        deadline = time.perf_counter() + args.start_timeout
        while client.llen(noop_app.QUEUE) >= total:
            worker.check_alive()
            if time.perf_counter() > deadline:
                raise ServerError(f"noop: nothing consumed within {args.start_timeout:g} s\n"
                                  + worker.log_tail())
            time.sleep(0.002)
        started, cpu_before = time.perf_counter(), worker.cpu_seconds()
        last, last_change = left(), started
        while last > 0 and time.perf_counter() - last_change < args.stall_timeout:
            worker.check_alive()
            time.sleep(0.005)
            now_left = left()
            if now_left != last:
                last, last_change = now_left, time.perf_counter()
        seconds = last_change - started
        cpu = worker.cpu_seconds() - cpu_before
        rss = peaks.finish()["worker"]
    client.flushdb()
    return Baseline(
        messages=total, seconds=round(seconds, 3),
        tasks_per_s=total / seconds if seconds > 0 else 0.0, worker_rss_peak_mib=rss,
        worker_cpu_us_per_task=1e6 * cpu / total, drained=last == 0,
    )


@dataclass
class Stack:
    """The api and the worker on the bench's database and Redis, and how to drive them."""

    args: argparse.Namespace
    generator: str
    db: Database
    client: redis.Redis
    api: GunicornServer
    worker: CeleryWorker

    def target(self) -> Target:
        from bench import loadgen
        from bench.intake import PATH

        return loadgen.Target(
            "127.0.0.1", self.api.port, PATH, b"",
            {"Content-Type": "application/json", "key": self.args.key},
        )

    def start(self, warmup_events: int = 40) -> None:
        """Start both, then push a few events through: it works, and everything is warm."""
        from bench import loadgen
        from bench.intake import body

        status, answer = self.api.start(
            replace(self.target(), body=body(1)), timeout_s=self.args.start_timeout
        )
        if status != 200:
            raise ServerError(f"api: the probe request got {status}: {answer[:300]!r}")
        self.worker.start(self.args.start_timeout)
        events, _ = scenario_events(STORM, warmup_events)
        result = loadgen.run_each(self.generator, self.target(), bodies(events, 1), 4)
        expected = result.ok + 1  # and the probe's
        done, when = wait_until_done(self.db, expected, self.worker, self.args.start_timeout)
        if when is None:
            raise ServerError(
                f"warm-up: {done} of {expected} events done within {self.args.start_timeout:g} s"
                f"\n{self.worker.log_tail()}"
            )

    def run(self, scenario: str, baseline: Baseline | None, report: Report, label: str = ""
            ) -> Figures:
        from bench import loadgen

        kind, per_body = SCENARIOS[scenario]
        events, expected_requests = scenario_events(kind, self.args.events)
        posts = bodies(events, per_body)
        self.db.empty_processing_tables()
        services: dict[str, Service] = {"api": self.api, "worker": self.worker}
        log(f"{scenario}: {len(events)} events in {len(posts)} requests of {per_body}")
        with profiled(self.args.profile, scenario, services, report):
            peaks = Peaks(services)
            peaks.start()
            before = CpuSnapshot.take(self.api, self.worker, self.client, self.db)
            started = time.perf_counter()
            result = loadgen.run_each(
                self.generator, self.target(), posts, self.args.connections,
                max_seconds=max(600.0, self.args.events / 10),
            )
            posted = time.perf_counter()
            done_when_posted = self.db.done()
            self.api.check_alive()
            # Every event of a 200 answer was queued (the bench's events are all valid).
            accepted = (len(events) if result.ok == len(posts)
                        else min(len(events), result.ok * per_body))
            done, finished = wait_until_done(
                self.db, accepted, self.worker, self.args.stall_timeout
            )
            after = CpuSnapshot.take(self.api, self.worker, self.client, self.db)
            rss = peaks.finish()
        used = after.used_since(before, result.cpu_s)
        e2e_s = finished - started if finished is not None else 0.0
        e2e_rate = accepted / e2e_s if e2e_s > 0 else 0.0
        target = TARGETS.get(scenario)
        return Figures(
            scenario=scenario + label, events_per_body=per_body, events=len(events),
            bodies=len(posts),
            answered_200=result.ok,
            non_200={str(status): count for status, count in result.non_ok.items()},
            errors=result.errors, accepted=accepted, completed=done,
            distinct_events=self.db.scalar(
                "SELECT count(DISTINCT correlationid) FROM transactions "
                f"WHERE {SCENARIO_TRANSACTIONS}"
            ),
            failed=self.db.scalar("SELECT count(*) FROM transactions "
                                  f"WHERE {SCENARIO_TRANSACTIONS} AND status = 'failed'"),
            post_s=round(posted - started, 3), e2e_s=round(e2e_s, 3),
            post_events_per_s=accepted / (posted - started),
            e2e_events_per_s=e2e_rate, completed_when_posted=done_when_posted,
            requests_created=self.db.requests_created(),
            expected_requests=expected_requests,
            queue_left=int(self.client.llen(EVENTS_QUEUE)),
            p50_ms=result.p50_ms, p99_ms=result.p99_ms,
            worker_rss_peak_mib=rss["worker"], api_rss_peak_mib=rss["api"],
            cpu_us_per_event={
                part: 1e6 * seconds / accepted if accepted else 0.0
                for part, seconds in used.items()
            },
            target_events_per_s=target,
            met=None if target is None else e2e_s > 0 and e2e_rate >= target,
            vs_noop=e2e_rate / baseline.tasks_per_s if baseline and baseline.tasks_per_s
            and e2e_s > 0 else None,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import redis

    from bench import loadgen
    from bench.servers import GunicornSettings
    from shared.settings import Settings

    client = redis.Redis.from_url(args.redis_url)
    try:  # what must be there before anything starts
        generator = loadgen.choose(args.loadgen)
        client.ping()
    except (RuntimeError, redis.RedisError) as exc:
        log(f"cannot run: {exc} (Redis: {args.redis_url})")
        return 2
    defaults = Settings()
    settings = GunicornSettings(
        workers=args.api_workers, threads=args.api_threads,
        worker_connections=-(-args.connections // args.api_workers),
    )
    db = Database(args.postgres_url)
    report = Report(
        generator=generator,
        generator_version=(loadgen.wrk_version() if generator == loadgen.WRK
                           else sys.version.split()[0]),
        gunicorn=settings.describe(),
        worker=f"celery prefork --concurrency {args.concurrency}, events.process batches of "
               f"{args.batch_size or defaults.worker_batch_size} messages (wait "
               f"{args.batch_wait or defaults.worker_batch_wait_seconds:g} s)",
        connections=args.connections, events=args.events, cpus=os.cpu_count() or 1,
        database=db.name,
    )
    try:
        status = run(args, report, settings=settings, db=db, client=client)
    finally:
        try:
            db.drop(keep=args.keep_database)
        except Exception as exc:
            log(f"dropping database {db.name} failed: {exc}")
        client.flushdb()
        client.close()
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table())
    return status


def preloaded(args: argparse.Namespace, db: Database, stack: Stack, report: Report
              ) -> Preloaded:
    """Preload, look at the plans, run the scenarios again, then time a purge of half."""
    from bench import preload
    from shared.settings import Settings

    period = Settings().transaction_retention
    log(f"preload: {args.preload} finished transactions over {period}")
    loaded = db.preload(args.preload, period)
    now = datetime.now(UTC)
    plans = [preload.explain(db.conn, name, sql)
             for name, sql in preload.hot_statements(now).items()]
    result = Preloaded(
        transactions=loaded.transactions, load_s=loaded.seconds,
        storage={table: (size.rows, size.total_bytes, size.bytes_per_row)
                 for table, size in preload.storage(db.conn).items()},
        plans=[(plan.name, plan.uses_index, plan.scans, plan.ms) for plan in plans],
    )
    for scenario in args.scenarios:
        report.figures.append(stack.run(scenario, report.baseline, report, PRELOADED))
    log("purge: the older half of the preload")
    purged = preload.purge_profile(db.url, period / 2)
    result.purge = {
        "transactions": purged.transactions, "deliveries": purged.deliveries,
        "attempts": purged.attempts, "seconds": purged.seconds, "batches": purged.batches,
        "longest_batch_ms": purged.longest_batch_seconds * 1000,
    }
    return result


def run(
    args: argparse.Namespace, report: Report, *, settings: GunicornSettings, db: Database,
    client: redis.Redis,
) -> int:
    """The baseline, then the stack and its scenarios, into ``report``: 0, or 1 on a failure."""
    from bench.servers import CeleryWorker, GunicornServer

    try:
        client.flushdb()
        log(f"database {db.name}: create, migrate, load {args.records.name}")
        db.create(args.records)
        if args.noop_messages > 0:
            report.baseline = noop_baseline(args, client)
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
            env = stack_env(args, db, Path(tmp))
            with GunicornServer("api", "api.wsgi:app", settings, env) as api, CeleryWorker(
                "events", "worker.app", EVENTS_QUEUE, args.concurrency, env=env
            ) as worker:
                stack = Stack(args, report.generator, db, client, api, worker)
                log(f"api: gunicorn {settings.describe()} on 127.0.0.1:{api.port}; "
                    f"worker: {report.worker}")
                stack.start()
                for scenario in args.scenarios:
                    report.figures.append(stack.run(scenario, report.baseline, report))
                if args.preload > 0:
                    report.preload = preloaded(args, db, stack, report)
    except Exception as exc:  # a server, the database, Redis or the load generator failed
        log(f"ERROR: {type(exc).__name__}: {exc}")
        report.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return 1
    return 0


if __name__ == "__main__":
    if not __package__:  # run as a script: bench/ is on sys.path, the repository root is not
        sys.path[0] = str(ROOT)
    sys.exit(main())
