"""Mail benchmark: small messages over SMTP until every one is a request, on PostgreSQL.

Run from the repository root::

    python -m bench.mail [--messages 2000] [--connections 8] [--runs 3] [--redis-url ...] [--json]

Setup: a throwaway PostgreSQL database (bench/e2e.py's: created, migrated, loaded with the demo
records, dropped at the end), ``eventdesk smtp`` (api/smtp.py) and one Celery worker on the
``mail`` queue (``--concurrency``, the default two processes), both on the given Redis database
(flushed before and after), the per-peer limits out of the way. The sink, in the same
invocation: a do-nothing aiosmtpd listener (a process of its own) that answers every DATA with
250 at once and keeps nothing.

A run sends ``--messages`` small messages (a subject and a line of text, each distinct: each
becomes a request of its own) on ``--connections`` concurrent SMTP connections, each kept open
for its share (smtplib, one thread a connection). Against the sink, messages/s = messages /
(last 250 - first connect). Against eventdesk, end to end: messages / (the last message
processed - first connect), polled in ``mail_messages`` every POLL_S. Runs alternate (sink,
eventdesk, sink, eventdesk ...) and the processing tables are emptied between eventdesk's
runs; the figures are the median of ``--runs`` each, the ratio median / median. Also shown:
eventdesk's accept rate (messages / last 250), and CPU per message of the listener, the
worker, PostgreSQL (the bench database's backends and the server's background processes), the
sink and the client.

Targets: >= 200 messages/s end to end, >= 0.5x the sink. Exit status: 0 even when a target is
missed (reported); non-zero when a server does not start or dies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import smtplib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from pathlib import Path

from bench.e2e import DEFAULT_REDIS_URL, ROOT, Database, stack_env
from bench.intake import log
from bench.servers import CeleryWorker, ServerError, Service, free_port
from shared.messaging import MAIL_QUEUE

TARGET_RATE = 200.0
TARGET_RATIO = 0.5
# How often the end of processing is looked for: it is known at most this late. Each look
# reads the status index (ix_mail_messages_pending) and the rows of its 'received' entries,
# under a millisecond at these runs' sizes, on the bench's own connection (not in the
# PostgreSQL CPU figures).
POLL_S = 0.01
SENDER, RECIPIENT = "ellen.brown@widget.com", "wdc@mail.eventdesk.local"
PROCESSING_TABLES = "mail_attachments, mail_messages, notes, requests, transactions"
# A subject's run of 6+ digits names a request to reply to (shared/mail/rules.py), and the
# lookup it costs would come and go with the random run id: the subjects carry no digits.
_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def message(run: str, index: int) -> bytes:
    mail = EmailMessage()
    mail["From"] = f"Ellen Brown <{SENDER}>"
    mail["To"] = RECIPIENT
    mail["Subject"] = f"Printer {run}-{index} is out of paper".translate(_NO_DIGITS)
    mail["Message-ID"] = f"<{run}-{index}@bench.widget.com>"
    mail.set_content(f"Printer {index} on the third floor needs paper.")
    return bytes(mail)


# --- the sink (a process of its own) -----------------------------------------------------------

class _Sink:
    async def handle_DATA(self, *_: object) -> str:  # noqa: N802 - aiosmtpd's hook name
        return "250 OK"


def serve_sink(port: int) -> None:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.new_event_loop()
    loop.run_until_complete(loop.create_server(
        lambda: SMTP(_Sink(), ident="sink", timeout=60), "127.0.0.1", port))
    loop.run_forever()


class SmtpService(Service):
    """A process listening for SMTP on 127.0.0.1 and a free port."""

    kind = "smtp listener"

    def __init__(self, name: str, module_args: list[str], env: dict[str, str] | None = None
                 ) -> None:
        super().__init__(name, env)
        self.port = free_port()
        self._args = module_args

    def command(self) -> list[str]:
        return [sys.executable, "-m", *self._args, "--port", str(self.port)]

    def start(self, timeout_s: float = 30.0) -> None:
        self.launch()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as smtp:
                    smtp.noop()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ServerError(f"{self.name}: no SMTP answer within {timeout_s:.0f} s\n"
                          + self.log_tail())


# --- the client ----------------------------------------------------------------------------------

@dataclass
class Sent:
    started: float
    last_accepted: float
    refused: int
    cpu_s: float  # this process's, while sending


def send_all(port: int, messages: list[bytes], connections: int) -> Sent:
    """Each connection sends its share on one kept-open SMTP session."""
    refused = [0] * connections
    barrier = threading.Barrier(connections + 1)

    def sender(number: int) -> None:
        share = messages[number::connections]
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo()
            barrier.wait()
            for raw in share:
                try:
                    smtp.sendmail(SENDER, [RECIPIENT], raw)
                except smtplib.SMTPResponseException:
                    refused[number] += 1

    threads = [threading.Thread(target=sender, args=(number,)) for number in range(connections)]
    for thread in threads:
        thread.start()
    cpu_before = time.process_time()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return Sent(started, time.perf_counter(), sum(refused), time.process_time() - cpu_before)


# --- the runs ----------------------------------------------------------------------------------

@dataclass
class Run:
    target: str  # "sink" or "eventdesk"
    messages: int
    refused: int
    unprocessed: int  # accepted, but not processed when the run gave up waiting
    seconds: float  # first connect to the last 250 (sink) or the last message processed
    messages_per_s: float
    accepted_per_s: float  # to the last 250
    cpu_us_per_message: dict[str, float]


def _cpu(services: dict[str, Service], db: Database | None) -> dict[str, float]:
    used = {name: service.cpu_seconds() for name, service in services.items()}
    if db is not None:
        used["postgres"] = sum(db.cpu_by_pid().values())
    return used


def _unprocessed(db: Database) -> int:
    return db.scalar("SELECT count(*) FROM mail_messages WHERE status = 'received'")


def run_once(target: str, port: int, *, count: int, connections: int,
             services: dict[str, Service], db: Database | None, stall_s: float) -> Run:
    messages = [message(uuid.uuid4().hex[:12], index) for index in range(count)]
    before = _cpu(services, db)
    sent = send_all(port, messages, connections)
    finished, done = sent.last_accepted, count - sent.refused
    if db is not None:
        # Every message answered 250 is stored (api/smtp.py): what is left is processing.
        left, last_change = _unprocessed(db), time.perf_counter()
        while left and time.perf_counter() - last_change < stall_s:
            for service in services.values():
                service.check_alive()
            time.sleep(POLL_S)
            now = _unprocessed(db)
            if now != left:
                left, last_change = now, time.perf_counter()
        finished, done = last_change, count - sent.refused - left
    after = _cpu(services, db)
    seconds = finished - sent.started
    cpu = {name: after[name] - before[name] for name in after}
    cpu["client"] = sent.cpu_s
    return Run(
        target=target, messages=count, refused=sent.refused,
        unprocessed=count - sent.refused - done, seconds=round(seconds, 3),
        messages_per_s=round(done / seconds, 1) if seconds > 0 else 0.0,
        accepted_per_s=round((count - sent.refused) / (sent.last_accepted - sent.started), 1),
        cpu_us_per_message={name: round(1e6 * value / max(done, 1)) for name, value
                            in cpu.items()},
    )


@dataclass
class Report:
    runs: list[Run]
    sink_per_s: float
    eventdesk_per_s: float
    ratio: float
    misses: list[str]

    def table(self) -> str:
        lines = ["| run | messages | refused | unprocessed | s | messages/s | accepted/s | "
                 "CPU µs/message |", "|---|---|---|---|---|---|---|---|"]
        for run in self.runs:
            cpu = ", ".join(f"{name} {value}" for name, value in run.cpu_us_per_message.items())
            lines.append(f"| {run.target} | {run.messages} | {run.refused} | "
                         f"{run.unprocessed} | {run.seconds} | "
                         f"{run.messages_per_s} | {run.accepted_per_s} | {cpu} |")
        lines.append("")
        lines.append(f"eventdesk end to end: {self.eventdesk_per_s} messages/s (target >= "
                     f"{TARGET_RATE:g}); sink: {self.sink_per_s} messages/s; ratio "
                     f"{self.ratio} (target >= {TARGET_RATIO:g})")
        if self.misses:
            lines.append("MISSED: " + "; ".join(self.misses))
        return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.mail", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's processes")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--stall-timeout", type=float, default=30.0,
                        help="give up waiting when nothing was processed for this long")
    parser.add_argument("--json", action="store_true")
    # The sink's own process: python -m bench.mail --serve-sink --port PORT.
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.messages, args.connections, args.runs, args.concurrency) < 1:
        parser.error("--messages, --connections, --runs and --concurrency must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    import redis

    args = parse_args(argv)
    if args.serve_sink:
        serve_sink(args.port)
        return 0
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    db = Database(args.pg_admin_url)
    db.create(ROOT / "shared" / "records" / "demo.yaml")
    data_dir = Path(tempfile.mkdtemp(prefix="bench-mail-"))
    env = stack_env(argparse.Namespace(redis_url=args.redis_url, batch_size=None,
                                       batch_wait=None), db, data_dir)
    env.update(EVENTDESK_SMTP_PEER_CONNECTIONS="1000",
               EVENTDESK_SMTP_PEER_MESSAGES_PER_MINUTE="100000000",
               EVENTDESK_SMTP_METRICS_PORT="0")
    runs: list[Run] = []
    try:
        with SmtpService("sink", ["bench.mail", "--serve-sink"], env) as sink, \
                SmtpService("smtp", ["api.smtp"], env) as listener, \
                CeleryWorker("mail", "worker.app", MAIL_QUEUE, args.concurrency,
                             env=env) as worker:
            sink.start()
            listener.start()
            worker.start()
            # Warm-up: the worker's first tasks load its code and records.
            run_once("eventdesk", listener.port, count=20, connections=2,
                     services={"worker": worker}, db=db, stall_s=args.stall_timeout)
            for _ in range(args.runs):
                runs.append(run_once("sink", sink.port, count=args.messages,
                                     connections=args.connections, services={"sink": sink},
                                     db=None, stall_s=args.stall_timeout))
                db.conn.execute(f"TRUNCATE {PROCESSING_TABLES} RESTART IDENTITY CASCADE")
                runs.append(run_once("eventdesk", listener.port, count=args.messages,
                                     connections=args.connections,
                                     services={"listener": listener, "worker": worker}, db=db,
                                     stall_s=args.stall_timeout))
                log(f"sink {runs[-2].messages_per_s}/s, eventdesk {runs[-1].messages_per_s}/s")
    finally:
        db.drop()
        client.flushdb()
    report = summarize(runs)
    print(json.dumps(asdict(report), indent=2) if args.json else report.table())
    return 0


def summarize(runs: list[Run]) -> Report:
    def median(target: str) -> float:
        return statistics.median(run.messages_per_s for run in runs if run.target == target)

    sink, eventdesk = median("sink"), median("eventdesk")
    ratio = round(eventdesk / sink, 2) if sink else 0.0
    misses = []
    if eventdesk < TARGET_RATE:
        misses.append(f"{eventdesk} messages/s < {TARGET_RATE:g}")
    if ratio < TARGET_RATIO:
        misses.append(f"{ratio} x the sink < {TARGET_RATIO:g}")
    for kind in ("refused", "unprocessed"):
        total = sum(getattr(run, kind) for run in runs)
        if total:
            misses.append(f"{total} messages {kind}")
    return Report(runs, sink, eventdesk, ratio, misses)


if __name__ == "__main__":
    sys.exit(main())
