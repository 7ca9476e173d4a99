"""Micro-benchmark of the mail worker's processing alone: ``process_job`` on stored messages.

Run from the repository root (PostgreSQL on localhost)::

    python -m bench.mail_micro [--messages 4000] [--job 450] [--runs 3] [--pg-admin-url URL]

No listener, broker or Celery: ``bench.mail``'s small messages are stored as intake stores them
(``shared/mail/store.save``, 50 a statement), then handed to ``process_job`` ``--job`` ids at a
time (about what one batch wait of ``bench.mail``'s stream gives a job), as one worker pool
process does, nothing taken along, its garbage collector settled as a worker's
(``shared/collector.settle``). On a throwaway database (``bench.e2e``'s: created,
migrated, loaded with the demo records, dropped at the end), the processing tables emptied
before each run, after a warm-up run.

Printed: µs per message of this process's CPU, of the database's CPU (its backends and the
server's background processes) and of wall-clock time, the median of ``--runs``. For a
profile, run it under ``py-spy record -o out.svg -- python -m bench.mail_micro``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from datetime import UTC, datetime

from bench.e2e import ROOT, Database
from bench.mail import PROCESSING_TABLES, RECIPIENT, message

STORE_GROUP = 50


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.mail_micro",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--job", type=int, default=450, help="mail ids a process_job call")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if min(args.messages, args.job, args.runs) < 1:
        parser.error("--messages, --job and --runs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    db = Database(args.pg_admin_url)
    db.create(ROOT / "shared" / "records" / "demo.yaml")
    from shared import collector
    from shared.db.engine import get_engine
    from shared.mail import store
    from shared.mail.queries import Destination
    from shared.mail.service import MailConfig, process_job
    from shared.records.directory import Directory
    from shared.transactions.failures import Backoff

    directory, config = Directory(3600), MailConfig()
    destination = Destination("wdc", None, RECIPIENT)
    collector.settle()
    figures: list[tuple[float, float, float]] = []
    try:
        for run in range(args.runs + 1):  # the first warms up
            db.conn.execute(f"TRUNCATE {PROCESSING_TABLES} RESTART IDENTITY CASCADE")
            name, now = uuid.uuid4().hex[:12], datetime.now(UTC)
            ids: list[int | None] = []
            with get_engine(db.url).connect() as connection:
                for first in range(0, args.messages, STORE_GROUP):
                    ids += [mail_id for mail_id, _ in store.save(connection, [store.NewMail(
                        transid=uuid.uuid4().hex, destination=destination,
                        message_id=f"<{name}-{index}@bench.widget.com>", raw=message(name, index),
                        peer="smtp 127.0.0.1", now=now)
                        for index in range(first, min(args.messages, first + STORE_GROUP))])]
                connection.commit()
            taken = [mail_id for mail_id in ids if mail_id is not None]
            database_before = sum(db.cpu_by_pid().values())
            cpu_before, started = time.process_time(), time.perf_counter()
            for first in range(0, len(taken), args.job):
                if not process_job(taken[first:first + args.job], directory, config, Backoff(),
                                   database_url=db.url):
                    raise SystemExit("the database was unreachable")
            cpu, wall = time.process_time() - cpu_before, time.perf_counter() - started
            database = sum(db.cpu_by_pid().values()) - database_before
            left = db.scalar("SELECT count(*) FROM mail_messages WHERE status = 'received'")
            if left:
                raise SystemExit(f"{left} messages left unprocessed")
            if run:
                figures.append((1e6 * cpu / args.messages, 1e6 * database / args.messages,
                                1e6 * wall / args.messages))
    finally:
        db.drop()
    worker, postgres, wall = (round(statistics.median(column))
                              for column in zip(*figures, strict=True))
    result = {"messages": args.messages, "job": args.job, "worker_cpu_us": worker,
              "postgres_cpu_us": postgres, "wall_us": wall}
    print(json.dumps(result) if args.json else
          f"{args.messages} messages, jobs of {args.job}: worker CPU {worker} µs/message, "
          f"PostgreSQL {postgres} µs/message, wall {wall} µs/message "
          f"({1e6 / wall:,.0f} messages/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
