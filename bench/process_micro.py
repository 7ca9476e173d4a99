"""Micro-benchmark of the worker's processing alone: ``process_batches`` called directly.

Run from the repository root (PostgreSQL on localhost)::

    python -m bench.process_micro [--events 10000] [--per-call 1000] [--per-batch 100]
        [--scenarios storm,distinct] [--notify] [--sqlite] [--postgres-url URL]

No api, broker or Celery: the events of ``bench.e2e``'s scenarios are built as
:class:`EventBatch` objects (``--per-batch`` events each, as the api queues them) and handed to
``process_batches`` ``--per-call`` events at a time, each call in its own ``session_scope`` (its
commit and the after-commit log lines and metrics included), as one worker pool process does.
It runs on a throwaway database (created, migrated, loaded with the demo records, dropped at
the end; ``--sqlite``: a temporary SQLite file instead), the processing tables emptied
between scenarios, after a warm-up call. ``--notify`` gives every batch a notify URL, so each
event also makes a notification delivery. Log lines are configured as in the worker (INFO, JSON)
and written to /dev/null.

Printed per scenario: µs per event of this process's CPU (``time.process_time``), of the
database's backends (PostgreSQL only; 0 on SQLite) and of wall-clock time. For a profile, run it
under ``py-spy record -o out.svg -- python -m bench.process_micro``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.e2e import DISTINCT, PROCESSING_TABLES, ROOT, STORM, Database, scenario_events
from bench.intake import prepare_eventdesk

KINDS = {"storm": STORM, "distinct": DISTINCT}


@dataclass
class Result:
    scenario: str
    events: int
    cpu_us: float  # per event: this process
    db_us: float  # per event: the database's backends
    wall_us: float  # per event

    def line(self) -> str:
        return (f"{self.scenario:<10} {self.events:>7} events  pool CPU {self.cpu_us:7.1f} µs/ev  "
                f"PostgreSQL {self.db_us:6.1f} µs/ev  wall {self.wall_us:7.1f} µs/ev  "
                f"({1e6 / self.wall_us:,.0f} ev/s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10000, help="events a scenario")
    parser.add_argument("--per-call", type=int, default=1000,
                        help="events handed to one process_batches call")
    parser.add_argument("--per-batch", type=int, default=100, help="events an EventBatch")
    parser.add_argument("--scenarios", default="storm,distinct",
                        type=lambda text: [name for name in text.split(",") if name])
    parser.add_argument("--notify", action="store_true", help="every batch has a notify URL")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file, not PostgreSQL")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="the admin database the throwaway one is created from")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(KINDS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def batches_of(kind: str, count: int, per_batch: int, *, key_id: int | None, notify: bool,
               received_at: datetime) -> list[Any]:
    """The scenario's events as the api would queue them, with fresh transids."""
    from shared.transactions.schemas import EventBatch, QueuedEvent

    events, _ = scenario_events(kind, count)
    run = time.time_ns()
    queued = [QueuedEvent(transid=f"t{run:x}-{index}", **event)
              for index, event in enumerate(events)]
    return [
        EventBatch(channel="webex", account_id="wdc", key_id=key_id, received_at=received_at,
                   notifyurl="https://hooks.example.com/eventdesk" if notify else None,
                   events=queued[i : i + per_batch])
        for i in range(0, len(queued), per_batch)
    ]


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """INFO lines as in the worker, written to /dev/null while in the block (whose end must
    come after the last line: structlog keeps the stream it first wrote to)."""
    import logging.config

    from shared.logs import dict_config

    logging.config.dictConfig(dict_config("worker", "INFO"))
    saved = sys.stderr
    with open(os.devnull, "w") as devnull:
        sys.stderr = devnull
        try:
            yield
        finally:
            sys.stderr = saved


def run_scenario(url: str, db: Database | None, scenario: str, args: argparse.Namespace,
                 key_id: int | None) -> Result:
    from shared.db.engine import session_scope
    from shared.records.directory import Directory
    from shared.transactions.service import process_batches

    directory = Directory(300)
    now = datetime.now(UTC)
    warmup = batches_of(KINDS[scenario], 100, args.per_batch, key_id=key_id,
                        notify=args.notify, received_at=now)
    batches = batches_of(KINDS[scenario], args.events, args.per_batch, key_id=key_id,
                         notify=args.notify, received_at=now)
    per_call = max(1, args.per_call // args.per_batch)
    with session_scope(url) as session:  # connection, directory and statement caches warm
        process_batches(session, warmup, now, directory)
    db_before = sum(db.cpu_by_pid().values()) if db else 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(0, len(batches), per_call):
        with session_scope(url) as session:
            process_batches(session, batches[i : i + per_call], datetime.now(UTC), directory)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    db_cpu = sum(db.cpu_by_pid().values()) - db_before if db else 0.0
    events = args.events
    return Result(scenario, events, 1e6 * cpu / events, 1e6 * db_cpu / events,
                  1e6 * wall / events)


def demo_key_id(url: str) -> int | None:
    from sqlalchemy import select

    from shared.db.engine import session_scope
    from shared.db.models import ApiKey

    with session_scope(url) as session:
        return session.scalars(select(ApiKey.id).where(ApiKey.name == "demo")).first()


def empty(url: str) -> None:
    from sqlalchemy import text

    from shared.db.engine import session_scope

    with session_scope(url) as session:
        for table in PROCESSING_TABLES.split(", "):
            session.execute(text(f"DELETE FROM {table}"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        db: Database | None = None
        if args.sqlite:
            url = prepare_eventdesk(Path(stack.enter_context(tempfile.TemporaryDirectory())),
                                    ROOT / "shared" / "records" / "demo.yaml")
        else:
            db = Database(args.postgres_url)
            db.create(ROOT / "shared" / "records" / "demo.yaml")
            stack.callback(db.drop)
            url = db.url
        key_id = demo_key_id(url)
        print(f"{'SQLite' if args.sqlite else 'PostgreSQL'}; {args.per_call} events a call, "
              f"{args.per_batch} a batch{', with notify URLs' if args.notify else ''}", flush=True)
        stack.enter_context(quiet_logs())
        for scenario in args.scenarios:
            empty(url)
            print(run_scenario(url, db, scenario, args, key_id).line(), flush=True)
    return 0


if __name__ == "__main__":
    if not __package__:
        sys.path[0] = str(Path(__file__).resolve().parent.parent)
    sys.exit(main())
