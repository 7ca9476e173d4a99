"""Shared fixtures: real servers on localhost, isolated per test session.

Server-backed tests skip on a developer machine without that server, but fail in CI (CI=true):
there, a skipped server test would prove nothing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import Connection

from shared.db.engine import dispose_engines, session_scope
from shared.db.migrate import upgrade
from shared.settings import get_settings

REPO = Path(__file__).resolve().parents[1]
RUN = uuid.uuid4().hex[:8]
DEMO = REPO / "shared" / "records" / "demo.yaml"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# EVENTDESK_TEST_REDIS_PORT: a Redis of the run's own (say, a second checkout's tests beside
# these), since the suite spreads itself over that server's sixteen databases.
REDIS_PORT = int(os.environ.get("EVENTDESK_TEST_REDIS_PORT", "6379"))
SERVERS = {"redis": REDIS_PORT, "postgres": 5432, "rabbitmq": 5672}


def server_up(name: str) -> bool:
    with closing(socket.socket()) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", SERVERS[name])) == 0


def require(name: str) -> None:
    if server_up(name):
        return
    message = f"{name} is not running on localhost:{SERVERS[name]}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must start it: see .ci/run)")
    pytest.skip(message)


def require_tool(name: str, package: str) -> str:
    """The path of a command-line tool from a Debian package that .ci/run installs.

    Missing, the test skips on a developer machine and fails in CI, like the servers.
    """
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (apt-get install {package})"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must install it: see .ci/run)")
    pytest.skip(message)


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A certificate for ``name`` (its CN and subjectAltName) and its key, made by openssl."""
    openssl = require_tool("openssl", "openssl")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run([
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
        "-addext", f"subjectAltName=DNS:{name}",
    ], check=True, capture_output=True)
    return cert, key


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in SERVERS:
            if item.get_closest_marker(name):
                item.add_marker(pytest.mark.usefixtures(f"_{name}_up"))


def backend(connection: Connection) -> int:
    """The PostgreSQL server process behind ``connection``."""
    pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
    assert isinstance(pid, int)
    return pid


def terminate(pid: int) -> None:
    """What a database restart does to a connection: the server ends it."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.fixture(scope="session")
def _redis_up() -> None:
    require("redis")


@pytest.fixture(scope="session")
def _postgres_up() -> None:
    require("postgres")


@pytest.fixture(scope="session")
def _rabbitmq_up() -> None:
    require("rabbitmq")


def worker_id(request: pytest.FixtureRequest) -> str:
    return str(getattr(request.config, "workerinput", {}).get("workerid", "main"))


def load_demo(url: str) -> None:
    from shared.records.importer import import_records, load_file

    with session_scope(url) as session:
        import_records(session, load_file(DEMO))


@contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own, migrated; dropped when the block ends."""
    require("postgres")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A throwaway PostgreSQL database, migrated and loaded with the demo records."""
    with throwaway_database(f"eventdesk_test_{worker_id(request)}") as url:
        load_demo(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "eventdesk.sqlite"
    url = f"sqlite:///{path}"
    upgrade(url)
    load_demo(url)
    return url


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Point the settings at the given URLs and limits for this test (EVENTDESK_* variables)."""

    def apply(**values: Any) -> None:
        monkeypatch.setenv("EVENTDESK_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("EVENTDESK_SECRET_KEY", "test-secret")
        for name, value in values.items():
            monkeypatch.setenv(f"EVENTDESK_{name.upper()}", str(value))
        get_settings.cache_clear()

    yield apply
    get_settings.cache_clear()


def redis_db_url(request: pytest.FixtureRequest, offset: int = 0) -> str:
    """A Redis database of its own for each xdist worker, so queues are not shared.

    Offsets 0-6 (seven a worker; Redis has 16 databases, so two xdist workers: 1-14): 0 the api
    tests, 1 and 2 test_worker.py's stacks, 3 and 4 test_notify.py's, 5 test_concurrency.py's,
    6 test_metrics.py's. Database 15 is test_bench_smoke.py's. The benches' own defaults (13 and
    15) are among them: a bench run by hand while the tests run would disturb both.
    """
    worker = worker_id(request)
    number = 1 + offset + (int(worker[2:]) * 7 if worker.startswith("gw") else 0)
    url = f"redis://127.0.0.1:{REDIS_PORT}/{number}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """The api tests' Redis broker (offset 0), emptied for each test."""
    return redis_db_url(request)


@pytest.fixture
def make_client(
    configure: Callable[..., None], sqlite_url: str, broker: str
) -> Callable[..., FlaskClient]:
    """An in-process api on ``broker`` and the demo records, with settings ``overrides``."""
    from api import create_app

    def make(**overrides: Any) -> FlaskClient:
        configure(**{"database_url": sqlite_url, "broker_url": broker, **overrides})
        return create_app().test_client()

    return make


@pytest.fixture
def client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client()


def queued_messages(broker: str) -> list[dict[str, Any]]:
    """Decode what the api pushed onto the ``events`` queue: the batches of every message."""
    client = redis.Redis.from_url(broker)
    batches = []
    for raw in client.lrange("events", 0, -1):
        envelope = json.loads(raw)
        assert envelope["headers"]["task"] == "events.process"
        args, _, _ = json.loads(base64.b64decode(envelope["body"]))
        batches += args
    return batches


def _vhost(request: pytest.FixtureRequest, name: str) -> Iterator[str]:
    require("rabbitmq")
    # Unique to this run: two checkouts' test runs never share (or delete) each other's vhost.
    vhost = f"eventdesk-{name}-{worker_id(request)}-{RUN}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)

    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    ctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def rabbitmq_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A RabbitMQ vhost of its own for each xdist worker, so queues are not shared."""
    yield from _vhost(request, "test")


@pytest.fixture(scope="session")
def rabbitmq_crash_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Another vhost, for tests that kill their workers (test_crash.py)."""
    yield from _vhost(request, "crash")


def wait_until(check: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Worker:
    """A real Celery worker in a subprocess (prefork), on the given broker and database."""

    def __init__(
        self, env: dict[str, str], log: Path, concurrency: int = 2, *,
        queues: str = "events,mail,notify", extra: tuple[str, ...] = (),
        new_session: bool = False,
    ) -> None:
        self.log = log
        command = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q",
            queues, "--concurrency", str(concurrency), "--loglevel", "INFO",
            "--hostname", f"test-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", *extra,
        ]
        self._log_file = log.open("w")
        # new_session: its own process group, so a test can kill the whole worker at once.
        self.proc = subprocess.Popen(
            command, cwd=REPO, stdout=self._log_file,
            # No metrics exporter: test workers would race for its port.
            env={**os.environ, "EVENTDESK_WORKER_METRICS_PORT": "0", **env},
            stderr=subprocess.STDOUT, start_new_session=new_session,
        )
        wait_until(lambda: "ready." in log.read_text() or self.proc.poll() is not None, 60)
        if self.proc.poll() is not None:
            raise RuntimeError("worker did not start:\n" + log.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()
