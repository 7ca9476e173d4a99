"""Notify benchmark: events with a notify URL posted to the api until every notification arrives.

Run from the repository root::

    python -m bench.notify [--events 10000] [--rate 1200] [--runs 3] [--redis-url ...] [--json]

Setup: a throwaway PostgreSQL database (as bench/e2e.py: created, migrated, loaded with
the demo records, dropped at the end), the api under gunicorn, one Celery worker on the
``events`` and ``notify`` queues (``--concurrency``, the default two processes) with the sweeper
(``--beat``), all on the given Redis database (flushed before and after), and a receiver: a
separate process answering every POST with 204 at once, on keep-alive connections, that notes
when each notification first arrives (by transid) and counts POSTs and distinct webhook-ids
(duplicates: POSTs beyond one a webhook-id).

A run POSTs ``--events`` storm events (bench/e2e.py's), ``--per-body`` a request, each body with
the receiver's ``notifyurl``, paced at ``--rate`` events/s (0: as fast as the api answers), and
waits until the receiver has every notification. Deliveries/s = notifications / (last received -
first POST). Latency = when the receiver got an event's notification - when the api answered the
POST that accepted it (both on this machine's clock): p50, p99.

The baseline, in the same invocation: a bare sender (a subprocess; ``--bare-connections`` threads,
each one http.client keep-alive connection) POSTs the same payloads, signed as the worker signs
them, to the same receiver, as fast as it answers. Runs alternate (eventdesk, bare, eventdesk,
bare ...); the figures are the median of ``--runs`` each, and the ratio is median / median.

CPU per delivery by process: api (gunicorn), worker (its consumer and pool processes),
PostgreSQL (the bench database's backends and the server's background processes), Redis, the
receiver, the client (this process: the poster and the polling), the bare sender, and other (the
rest of the machine: neighbours, steal).

Targets: >= 1,000 deliveries/s end to end, >= 0.15x the bare sender, p99 < 2 s. Exit status: 0
even when a target is missed (reported); non-zero when a server does not start or dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.request import urlopen

from bench.e2e import (
    DEFAULT_REDIS_URL,
    ROOT,
    STORM,
    Database,
    scenario_events,
    stack_env,
)
from bench.intake import PATH, log
from bench.servers import ServerError
from shared.messaging import EVENTS_QUEUE, NOTIFY_QUEUE

if TYPE_CHECKING:
    import redis

    from bench.servers import CeleryWorker, GunicornServer, Service

TARGET_RATE = 1000.0
TARGET_RATIO = 0.15
TARGET_P99_S = 2.0
DEMO_SECRET = "whsec_ZGVtby1zaWduaW5nLXNlY3JldC0wMTIzNDU2Nzg5YWI="  # the demo records'
POLL_S = 0.05
WARMUP_EVENTS = 200
_TRANSID = re.compile(rb'"transid":\s*"([^"]+)"')
T = TypeVar("T")


# --- the receiver (a process of its own) ------------------------------------------------------


class _Receiver(asyncio.Protocol):
    """HTTP/1.1 keep-alive, just enough of it: POST notes the notification, GET /count answers
    the distinct webhook-ids, GET /posts the POSTs, GET /dump the first arrival of each transid,
    GET /reset forgets."""

    arrived: dict[str, float] = {}  # noqa: RUF012 - one receiver a process
    ids: set[str] = set()  # noqa: RUF012
    posts = [0]  # noqa: RUF012

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(self.answer(lines[0], headers, body))

    def answer(self, request_line: str, headers: dict[str, str], body: bytes) -> bytes:
        if request_line.startswith("POST"):
            now = time.time()
            self.posts[0] += 1
            self.ids.add(headers.get("webhook-id", ""))
            found = _TRANSID.search(body)
            if found:
                self.arrived.setdefault(found.group(1).decode(), now)
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if " /reset" in request_line:
            self.arrived.clear()
            self.ids.clear()
            self.posts[0] = 0
            reply = b"{}"
        elif " /dump" in request_line:
            reply = json.dumps(self.arrived).encode()
        elif " /posts" in request_line:
            reply = str(self.posts[0]).encode()
        else:
            reply = str(len(self.ids)).encode()
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Receiver, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- the bare sender (a process of its own) ---------------------------------------------------


def _in_shares(work: Callable[[list[T]], None], items: list[T], connections: int) -> None:
    """``work`` on ``connections`` threads at once, each given every n-th item; until all end."""
    threads = [threading.Thread(target=work, args=(items[n::connections],))
               for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _bare(url: str, payloads_file: Path, connections: int) -> None:
    """POST every payload of ``payloads_file`` (JSON lines: message id, payload) to ``url``,
    signed, ``connections`` keep-alive connections at once; print seconds and CPU as JSON."""
    from shared.notify import signing
    from shared.notify.delivery import payload_bytes

    host, port = url.split("/")[2].split(":")
    path = "/" + url.split("/", 3)[3]
    work = [json.loads(line) for line in payloads_file.read_text().splitlines()]
    cpu, started = time.process_time(), time.perf_counter()

    def send(share: list[list[Any]]) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        for message_id, payload in share:
            body = payload_bytes(payload)
            headers = signing.headers([DEMO_SECRET], message_id, int(time.time()), body)
            connection.request("POST", path, body, headers)
            connection.getresponse().read()
        connection.close()

    _in_shares(send, work, connections)
    print(json.dumps({"seconds": time.perf_counter() - started,
                      "cpu_s": time.process_time() - cpu}))


# --- the figures ------------------------------------------------------------------------------


@dataclass
class Run:
    sender: str  # eventdesk or bare
    deliveries: int
    seconds: float
    deliveries_per_s: float
    p50_s: float | None = None
    p99_s: float | None = None
    duplicates: int = 0
    cpu_us_per_delivery: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    events: int
    per_body: int
    rate: float
    machine: str
    runs: list[Run] = field(default_factory=list)
    failed: str = ""

    def median(self, sender: str) -> Run | None:
        runs = sorted((r for r in self.runs if r.sender == sender),
                      key=lambda r: r.deliveries_per_s)
        return runs[len(runs) // 2] if runs else None

    def ratio(self) -> float | None:
        ours, bare = self.median("eventdesk"), self.median("bare")
        if ours is None or bare is None or not bare.deliveries_per_s:
            return None
        return ours.deliveries_per_s / bare.deliveries_per_s

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio()}

    def table(self) -> str:
        lines = [f"{self.events} events a run, {self.per_body} a request, offered at "
                 f"{self.rate or 'full'} events/s; {self.machine}"]
        for run in self.runs:
            latency = (f", accepted->received p50 {run.p50_s:.3f} s p99 {run.p99_s:.3f} s"
                       if run.p50_s is not None and run.p99_s is not None else "")
            cpu = " ".join(f"{part} {us:.0f}" for part, us in run.cpu_us_per_delivery.items())
            lines.append(f"  {run.sender:9} {run.deliveries} in {run.seconds:.2f} s: "
                         f"{run.deliveries_per_s:.0f}/s{latency}; duplicates {run.duplicates}; "
                         f"CPU µs/delivery: {cpu}")
        ours, bare, ratio = self.median("eventdesk"), self.median("bare"), self.ratio()
        if ours is not None and bare is not None and ratio is not None:
            p99 = ours.p99_s if ours.p99_s is not None else float("inf")
            met = (ours.deliveries_per_s >= TARGET_RATE and ratio >= TARGET_RATIO
                   and p99 < TARGET_P99_S)
            lines.append(f"median: eventdesk {ours.deliveries_per_s:.0f}/s, bare "
                         f"{bare.deliveries_per_s:.0f}/s, ratio {ratio:.3f}, p99 {p99:.3f} s: "
                         f"targets (>= {TARGET_RATE:.0f}/s, >= {TARGET_RATIO}x, p99 < "
                         f"{TARGET_P99_S:g} s) {'met' if met else 'NOT met'}")
        if self.failed:
            lines.append(f"failed: {self.failed}")
        return "\n".join(lines)


def _machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# --- running ----------------------------------------------------------------------------------


class Receiver:
    """The receiver process, and its little control API."""

    def __init__(self, env: dict[str, str]) -> None:
        from bench.servers import Service, free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}/hook"

        class Process(Service):
            kind = "receiver"

            def command(self) -> list[str]:
                return [sys.executable, "-m", "bench.notify", "--receive", str(port)]

        self.service: Service = Process("receiver", env)

    def start(self, timeout_s: float) -> None:
        self.service.launch()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.count()
                return
            except OSError as exc:
                self.service.check_alive()
                if time.monotonic() > deadline:
                    raise ServerError(
                        "receiver: not answering\n" + self.service.log_tail()) from exc
                time.sleep(0.05)

    def _get(self, what: str) -> bytes:
        with urlopen(self.url.replace("/hook", f"/{what}"), timeout=10) as answer:
            body: bytes = answer.read()
            return body

    def count(self) -> int:
        return int(self._get("count"))

    def posts(self) -> int:
        return int(self._get("posts"))

    def reset(self) -> None:
        self._get("reset")

    def arrived(self) -> dict[str, float]:
        found: dict[str, float] = json.loads(self._get("dump"))
        return found


@dataclass
class Stack:
    args: argparse.Namespace
    db: Database
    client: redis.Redis
    api: GunicornServer
    worker: CeleryWorker
    notifier: CeleryWorker | None  # the notify queue's own worker, if it has one
    receiver: Receiver

    def _bodies(self, count: int) -> list[bytes]:
        events, _ = scenario_events(STORM, count)
        per = self.args.per_body
        return [json.dumps({"notifyurl": self.receiver.url, "events": events[i:i + per]},
                           separators=(",", ":")).encode()
                for i in range(0, len(events), per)]

    def _post(self, bodies: list[bytes], rate: float) -> dict[str, float]:
        """POST ``bodies`` paced at ``rate`` events/s; when each transid was accepted."""
        accepted: dict[str, float] = {}
        lock = threading.Lock()
        interval = self.args.per_body / rate if rate else 0.0
        started = time.perf_counter()
        headers = {"Content-Type": "application/json", "key": self.args.key}
        connections = max(1, self.args.connections)

        def post(share: list[tuple[int, bytes]]) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", self.api.port, timeout=30)
            for index, body in share:
                wait = started + index * interval - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                connection.request("POST", PATH, body, headers)
                answer = connection.getresponse()
                reply = answer.read()
                now = time.time()
                if answer.status != 200:
                    raise ServerError(f"api answered {answer.status}: {reply[:200]!r}")
                with lock:
                    for transid in _TRANSID.findall(reply):
                        accepted[transid.decode()] = now
            connection.close()

        _in_shares(post, list(enumerate(bodies)), connections)
        return accepted

    def _wait(self, expected: int) -> float:
        """Until the receiver has ``expected`` notifications: when it had them."""
        last, last_change = -1, time.perf_counter()
        while True:
            count = self.receiver.count()
            now = time.perf_counter()
            if count >= expected:
                return now
            if count != last:
                last, last_change = count, now
            elif now - last_change > self.args.stall_timeout:
                raise ServerError(f"{count} of {expected} notifications after a stall of "
                                  f"{self.args.stall_timeout:g} s\n{self.worker.log_tail()}")
            for worker in self._workers().values():
                worker.check_alive()
            time.sleep(POLL_S)

    def _workers(self) -> dict[str, Service]:
        return {"worker": self.worker, **({"notifier": self.notifier} if self.notifier else {})}

    def _empty(self) -> None:
        """The processing tables emptied, once the worker has recorded the last run's outcomes
        (a notification arrives a flush before it is recorded); the sweeper's queries can
        deadlock with the TRUNCATE (it reads the tables in another order): then again."""
        import psycopg

        deadline = time.monotonic() + self.args.stall_timeout
        while self.db.scalar("SELECT count(*) FROM notification_deliveries "
                             "WHERE status = 'sending'") and time.monotonic() < deadline:
            time.sleep(POLL_S)
        for attempt in range(5):
            try:
                self.db.empty_processing_tables()
                return
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise
                time.sleep(0.5)

    def eventdesk(self, events: int, rate: float) -> Run:
        self._empty()
        self.receiver.reset()
        bodies = self._bodies(events)
        log(f"eventdesk: {events} events in {len(bodies)} requests")
        services: dict[str, Service] = {"api": self.api, **self._workers(),
                                        "receiver": self.receiver.service}
        before, client_cpu = _cpu(services, self.client, self.db), time.process_time()
        started = time.perf_counter()
        accepted = self._post(bodies, rate)
        finished = self._wait(len(accepted))
        used = _used(before, _cpu(services, self.client, self.db),
                     client=time.process_time() - client_cpu)
        arrived = self.receiver.arrived()
        latencies = [arrived[t] - at for t, at in accepted.items() if t in arrived]
        seconds = finished - started
        return Run(
            "eventdesk", len(accepted), round(seconds, 3), len(accepted) / seconds,
            p50_s=_percentile(latencies, 0.5), p99_s=_percentile(latencies, 0.99),
            duplicates=self.receiver.posts() - self.receiver.count(),
            cpu_us_per_delivery={k: 1e6 * v / len(accepted) for k, v in used.items()},
        )

    def bare(self, env: dict[str, str], directory: Path) -> Run:
        import subprocess

        rows = self.db.conn.execute(
            "SELECT message_id, payload FROM notification_deliveries ORDER BY id").fetchall()
        payloads = directory / "payloads.jsonl"
        payloads.write_text("".join(json.dumps([m, p]) + "\n" for m, p in rows))
        self.receiver.reset()
        log(f"bare: {len(rows)} payloads, {self.args.bare_connections} connections")
        services: dict[str, Service] = {"receiver": self.receiver.service}
        before = _cpu(services, self.client, self.db)
        done = subprocess.run(
            [sys.executable, "-m", "bench.notify", "--bare", self.receiver.url, str(payloads),
             str(self.args.bare_connections)],
            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, check=True,
        )
        figures = json.loads(done.stdout)
        used = _used(before, _cpu(services, self.client, self.db), client=0.0)
        used = {"bare": figures["cpu_s"], "receiver": used["receiver"], "other": max(
            0.0, used["other"] - figures["cpu_s"])}
        if self.receiver.count() < len(rows):
            raise ServerError(f"bare: the receiver has {self.receiver.count()} of {len(rows)}")
        return Run("bare", len(rows), round(figures["seconds"], 3),
                   len(rows) / figures["seconds"],
                   cpu_us_per_delivery={k: 1e6 * v / len(rows) for k, v in used.items()})


def _cpu(services: dict[str, Service], client: redis.Redis, db: Database) -> dict[str, float]:
    from bench.intake import machine_cpu_seconds, redis_cpu_seconds

    found = {name: service.cpu_seconds() for name, service in services.items()}
    found["redis"] = redis_cpu_seconds(client)
    found["postgres"] = sum(db.cpu_by_pid().values())
    found["machine"] = machine_cpu_seconds()
    return found


def _used(before: dict[str, float], after: dict[str, float], *, client: float) -> dict[str, float]:
    used = {k: after[k] - before[k] for k in after if k != "machine"}
    used["client"] = client
    used["other"] = max(0.0, after["machine"] - before["machine"] - sum(used.values()))
    return used


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    summary = (__doc__ or "").strip().splitlines()[:1]
    parser = argparse.ArgumentParser(prog="python -m bench.notify", description=" ".join(summary))
    parser.add_argument("--events", type=int, default=10_000, help="events (notifications) a run")
    parser.add_argument("--per-body", type=int, default=100, help="events a request")
    parser.add_argument("--rate", type=float, default=1200.0,
                        help="events/s offered to the api (0: as fast as it answers)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each sender (median)")
    parser.add_argument("--connections", type=int, default=4, help="api client connections")
    parser.add_argument("--bare-connections", type=int, default=4,
                        help="the bare sender's keep-alive connections")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn workers (gthread)")
    parser.add_argument("--api-threads", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--host-concurrency", type=int, default=0,
                        help="EVENTDESK_NOTIFY_HOST_CONCURRENCY (0: the setting's default)")
    parser.add_argument("--notify-processes", type=int, default=0,
                        help="processes of a worker of the notify queue's own (0: the one worker "
                        "takes both queues, as eventdesk run does)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help="a Redis database the bench owns: flushed before and after")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--records", type=Path, default=ROOT / "shared" / "records" / "demo.yaml")
    parser.add_argument("--key", default="demo-key")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--stall-timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_wait = None  # stack_env's: the settings' defaults
    if min(args.events, args.per_body, args.runs, args.connections, args.bare_connections) < 1:
        parser.error("--events, --per-body, --runs and the connections must be >= 1")
    return args


@contextlib.contextmanager
def _stack(args: argparse.Namespace, db: Database, client: redis.Redis,
           tmp: Path) -> Iterator[tuple[Stack, dict[str, str]]]:
    from bench.intake import body
    from bench.loadgen import Target
    from bench.servers import CeleryWorker, GunicornServer, GunicornSettings

    class SweepingWorker(CeleryWorker):
        """With the sweeper (``--beat``), as ``eventdesk run`` has it."""

        def command(self) -> list[str]:
            return [*super().command(), "--beat"]

    env = stack_env(args, db, tmp)
    env["EVENTDESK_NOTIFY_ALLOW_NETWORKS"] = "127.0.0.0/8"
    if args.host_concurrency:
        env["EVENTDESK_NOTIFY_HOST_CONCURRENCY"] = str(args.host_concurrency)
    settings = GunicornSettings(workers=args.api_workers, threads=args.api_threads,
                                worker_connections=-(-args.connections // args.api_workers))
    receiver = Receiver(env)
    own = args.notify_processes > 0
    with GunicornServer("api", "api.wsgi:app", settings, env) as api, (
        CeleryWorker("worker", "worker.app", EVENTS_QUEUE, args.concurrency, env=env) if own
        else SweepingWorker("worker", "worker.app", f"{EVENTS_QUEUE},{NOTIFY_QUEUE}",
                            args.concurrency, env=env)
    ) as worker, SweepingWorker(
        "notifier", "worker.app", NOTIFY_QUEUE, max(1, args.notify_processes), env=env,
    ) as notifier, receiver.service:
        target = Target("127.0.0.1", api.port, PATH, body(1),
                        {"Content-Type": "application/json", "key": args.key})
        status, answer = api.start(target, timeout_s=args.start_timeout)
        if status != 200:
            raise ServerError(f"api: the probe request got {status}: {answer[:300]!r}")
        worker.start(args.start_timeout)
        if own:
            notifier.start(args.start_timeout)
        receiver.start(args.start_timeout)
        stack = Stack(args, db, client, api, worker, notifier if own else None, receiver)
        stack.eventdesk(WARMUP_EVENTS, 0.0)  # connections, caches, the pool processes' streams
        yield stack, env


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--receive":
        asyncio.run(_serve(int(sys.argv[2])))
        return 0
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--bare":
        _bare(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
        return 0
    args = parse_args(argv)
    import redis

    client = redis.Redis.from_url(args.redis_url)
    report = Report(args.events, args.per_body, args.rate, _machine())
    db = Database(args.postgres_url)
    status = 0
    try:
        client.flushdb()
        db.create(args.records)
        with tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp, _stack(
            args, db, client, Path(tmp)
        ) as (stack, env):
            for _ in range(args.runs):
                report.runs.append(stack.eventdesk(args.events, args.rate))
                report.runs.append(stack.bare(env, Path(tmp)))
        report.machine = f"{report.machine} before; {_machine()} after"
    except Exception as exc:  # a server, the database, Redis or the receiver failed
        log(f"ERROR: {type(exc).__name__}: {exc}")
        report.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        status = 1
    finally:
        with contextlib.suppress(Exception):
            db.drop()
        client.flushdb()
        client.close()
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table())
    return status


if __name__ == "__main__":
    if not __package__:
        sys.path[0] = str(ROOT)
    sys.exit(main())
