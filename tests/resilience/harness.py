"""Real processes and real faults for the resilience scenarios, and the count that judges them.

Every scenario streams distinct events (each its own subject and sourceID, so each makes one
request) through a gunicorn api into a Celery worker, injects its fault, then counts from the
database: what was sent, acknowledged (1002), completed, and lost, duplicated or stuck (all 0).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import func, select

from bench.servers import free_port
from shared.db.engine import session_scope
from shared.db.models import Request, Transaction
from tests.conftest import REPO, Worker, wait_until
from tests.test_crash import children

WEBEX_PATH = "/resources/v1/events/externalevent/"
FINISHED = ("completed", "failed", "expired")


class RedisServer:
    """A private redis-server on a free port, in a folder of its own; AOF with fsync always,
    the setting the durability docs ask of a production broker."""

    def __init__(self, folder: Path, *, aof: bool = True) -> None:
        self.folder = folder
        self.port = free_port()
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.folder.mkdir(parents=True, exist_ok=True)
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.aof
                       else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.folder), *persistence],
            stdout=(self.folder / "redis.log").open("a"), stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 10, 0.05)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@contextmanager
def private_redis(folder: Path, *, aof: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(folder, aof=aof)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def service_env(broker: str, database: str, **extra: str) -> dict[str, str]:
    return {
        "EVENTDESK_BROKER_URL": broker, "EVENTDESK_DATABASE_URL": database,
        "EVENTDESK_SECRET_KEY": "test-secret", "EVENTDESK_WORKER_METRICS_PORT": "0",
        "EVENTDESK_RATE_LIMIT_PER_SECOND": "100000", "EVENTDESK_RATE_LIMIT_BURST": "100000",
        **extra,
    }


class Api:
    """``gunicorn api.wsgi:app`` on a free port, in a session of its own."""

    def __init__(self, env: dict[str, str], log: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf",
             "--workers", str(workers), "--threads", "8", "--worker-class", "gthread",
             "--bind", f"127.0.0.1:{self.port}", "--timeout", "60", "api.wsgi:app"],
            cwd=REPO, env={**os.environ, **env}, stdout=self._log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(self._ready, 60, 0.1)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("api did not start:\n" + self.log.read_text())
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()


@dataclass
class Stream:
    """Distinct events posted to the Webex intake, one per request, from several threads."""

    port: int
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    acknowledged: dict[str, str] = field(default_factory=dict)  # transid -> sourceID
    refused: dict[str, int] = field(default_factory=dict)  # code -> count
    # (time.monotonic() when sent, seconds until answered or given up, code), in answer order
    answers: list[tuple[float, float, str]] = field(default_factory=list)
    sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, number: int, **parameters: str) -> dict[str, object]:
        source_id = f"{self.run}-{number}"
        return {"evtid": "server-down", "parameters": {
            "host": "db1", "subject": f"resilience {source_id}", "sourceID": source_id,
            **parameters}}

    def post(self, count: int, *, threads: int = 8, start: int = 0,
             between: Callable[[int], None] | None = None) -> None:
        """Post ``count`` events; ``between(i)`` runs in the sender's thread before event i."""
        def send(numbers: range) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            for number in numbers:
                if between is not None:
                    between(number)
                self.post_one(connection, self.event(number))

        per = -(-count // threads)
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(send, range(start + i * per, start + min(count, (i + 1) * per)))
                       for i in range(threads)]
            for future in futures:
                future.result()

    def post_one(self, connection: http.client.HTTPConnection, event: dict[str, object]) -> str:
        body = json.dumps({"events": [event]})
        started = time.monotonic()
        try:
            connection.request("POST", WEBEX_PATH, body,
                               {"key": "demo-key", "Content-Type": "application/json"})
            answer = json.loads(connection.getresponse().read())["response"][0]
        except (OSError, http.client.HTTPException, ValueError):
            # No answer (the api process died mid-request): not acknowledged, the caller retries.
            connection.close()
            answer = {"code": "no answer"}
        with self._lock:
            self.answers.append((started, time.monotonic() - started, str(answer["code"])))
            self.sent += 1
            if answer["code"] == "1002":
                source_id = event["parameters"]["sourceID"]  # type: ignore[index]
                self.acknowledged[answer["transid"]] = str(source_id)
            else:
                self.refused[answer["code"]] = self.refused.get(answer["code"], 0) + 1
        return str(answer["code"])


@dataclass(frozen=True)
class Count:
    sent: int
    acknowledged: int
    completed: int
    failed: int
    lost: int
    duplicated: int
    stuck: int

    def __str__(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in vars(self).items())

    def all_done_once(self) -> bool:
        """Every acknowledged event completed, once: nothing lost, duplicated, stuck or failed."""
        return (self.lost, self.duplicated, self.stuck, self.failed) == (0, 0, 0, 0) and (
            self.completed == self.acknowledged)


def count(database: str, stream: Stream) -> Count:
    """What became of the acknowledged events, read from the database."""
    transids = list(stream.acknowledged)
    statuses: dict[str, str] = {}
    with session_scope(database) as session:
        for chunk in range(0, len(transids), 1000):
            rows = session.execute(select(Transaction.transid, Transaction.status).where(
                Transaction.transid.in_(transids[chunk:chunk + 1000])))
            statuses.update({str(t): str(s) for t, s in rows})
        copies = session.execute(
            select(Request.source_id, func.count()).where(
                Request.source_id.like(f"{stream.run}-%")).group_by(Request.source_id)
        ).all()
    duplicated = sum(n - 1 for _, n in copies if n > 1)
    return Count(
        sent=stream.sent, acknowledged=len(transids),
        completed=sum(1 for s in statuses.values() if s == "completed"),
        failed=sum(1 for s in statuses.values() if s == "failed"),
        lost=len(transids) - len(statuses),
        duplicated=duplicated,
        stuck=sum(1 for s in statuses.values() if s not in FINISHED),
    )


def settle(database: str, stream: Stream, timeout: float) -> tuple[Count, float]:
    """Wait until every acknowledged event has finished (or ``timeout``); the count, and how
    long it took."""
    started = time.monotonic()

    def finished() -> bool:
        now = count(database, stream)
        return now.completed + now.failed >= now.acknowledged

    with contextlib.suppress(AssertionError):  # then the count says what is missing
        wait_until(finished, timeout, 0.5)
    return count(database, stream), time.monotonic() - started


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ vhost unique to this run, deleted afterwards."""

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)

    vhost = f"eventdesk-resilience-{uuid.uuid4().hex[:10]}"
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        ctl("delete_vhost", vhost)


@contextmanager
def broker(kind: str, folder: Path) -> Iterator[str]:
    """A broker of its own: a private Redis (AOF) or a RabbitMQ vhost."""
    if kind == "redis":
        with private_redis(folder) as server:
            yield server.url
    else:
        with rabbitmq_vhost() as url:
            yield url


def paced(per_second: float, threads: int) -> Callable[[int], None]:
    """A ``between`` for :meth:`Stream.post` that spreads the stream over time."""
    pause = threads / per_second
    return lambda _: time.sleep(pause)


class WorkerKiller:
    """Two workers on ``queues``; while running, every ``every`` seconds one of them in turn is
    SIGKILLed: its whole process group (the main process and its pool, as a container runtime or
    the OOM killer does), then a new worker started in its place; or only its pool processes."""

    def __init__(self, env: dict[str, str], folder: Path, queues: str, *, whole: bool,
                 every: float) -> None:
        self._env, self._folder, self._queues = env, folder, queues
        self._whole, self._every = whole, every
        self.workers = [self._start(f"worker-{number}") for number in range(2)]
        self.kills = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._kill)

    def _start(self, name: str) -> Worker:
        return Worker(self._env, self._folder / f"{name}.log", queues=self._queues,
                      new_session=True)

    def _kill(self) -> None:
        while not self._done.wait(self._every):
            victim = self.workers[self.kills % 2]
            if self._whole:
                os.killpg(victim.proc.pid, signal.SIGKILL)
                victim.proc.wait()
                victim.stop()
                self.workers[self.kills % 2] = self._start(f"worker-{self.kills}-new")
            elif not self._kill_pool(victim):
                continue  # nothing was killed: the round does not count
            self.kills += 1

    @staticmethod
    def _kill_pool(victim: Worker) -> bool:
        """SIGKILL each pool process of ``victim``; whether any was there to kill. One may
        exit, or be reaped, between the listing and its kill: gone already, as the kill wants."""
        killed = False
        for pid in children(victim.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed = True
        return killed

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop killing (the workers keep running)."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def close(self) -> None:
        self.stop()
        for worker in self.workers:
            worker.stop()
