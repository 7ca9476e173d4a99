"""Metrics and logs (DESIGN 7), from the recording helpers to a real Prometheus.

Fast: the api counts each answered entry under its code (Flask test client, this process's
registry); outcomes are counted only once their transaction commits; the JSON log lines.

Slow: ``eventdesk api`` (gunicorn, 2 workers: multiprocess mode) and ``eventdesk worker``
(Celery prefork, 2 processes) started by the CLI on Redis and SQLite; a small load; the api's
``/metrics`` and the worker's exporter must have moved by exactly what was sent, per code and
per outcome, and ``promtool check metrics`` must accept both. Then a real Prometheus scrapes
them and answers a query for ``eventdesk_events_received_total``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from api import create_app
from shared import logs, metrics, observe
from shared.codes import Code
from tests.conftest import REPO, redis_db_url, require_tool, wait_until

PATH = "/resources/v1/events/externalevent/"
DESIGN_NAMES = {
    "eventdesk_events_received": {"channel", "code"},
    "eventdesk_events_processed": {"channel", "outcome"},
    "eventdesk_event_latency_seconds": {"channel"},
    "eventdesk_notifications": {"result"},
    "eventdesk_notification_attempts": {"result"},
    "eventdesk_mail_received": {"result"},
}


def event(**parameters: str) -> dict[str, Any]:
    """A valid event that matches nothing sent before (every value is new)."""
    unique = uuid.uuid4().hex
    return {"evtid": "server-down", "correlationid": unique[:8], "parameters": {
        "host": f"h-{unique}", "subject": f"Down {unique}", "source": "metrics-test",
        "sourceID": unique, **parameters,
    }}


# ---------------------------------------------------------------------------------------------
# In this process


def test_design_names_are_declared_with_bounded_labels() -> None:
    declared = {
        wrapper._name: set(wrapper._labelnames) for wrapper in vars(metrics).values()
        if hasattr(wrapper, "_labelnames") and hasattr(wrapper, "_name")
    }
    for name, labels in DESIGN_NAMES.items():
        assert declared[name] == labels
    assert {metrics.QUEUE_DEPTH, metrics.DEPENDENCY_UP} <= metrics.DECLARED
    assert set(declared) <= metrics.DECLARED
    forbidden = {"transid", "key", "url", "account", "account_id", "correlationid"}
    assert not any(labels & forbidden for labels in declared.values())


def test_each_role_gets_its_own_emptied_metrics_directory(tmp_path: Path) -> None:
    stale = tmp_path / "metrics" / "api-8000" / "counter_1.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier run")
    assert metrics.multiproc_dir(None, tmp_path, "api-8000") == tmp_path / "metrics" / "api-8000"
    assert not stale.exists()
    base = tmp_path / "given"
    assert metrics.multiproc_dir(base, tmp_path, "worker-9808") == base / "worker-9808"
    assert (base / "worker-9808").is_dir()


def received(code: str) -> float:
    value = REGISTRY.get_sample_value(
        "eventdesk_events_received_total", {"channel": "webex", "code": code})
    return value or 0.0


def test_api_counts_each_answered_entry_by_code(
    configure: Callable[..., None], sqlite_url: str, tmp_path: Path
) -> None:
    # The embedded broker and the in-process rate limit: 4 events, then 7020.
    configure(database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.sqlite",
              rate_limit_burst=4, rate_limit_per_second=0.001, max_body_bytes=4096)
    client = create_app().test_client()
    before = {code: received(code) for code in Code}

    def post(body: Any, key: str = "demo-key", content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        client.post(PATH, data=data, headers={"key": key, "content-type": content_type})

    post({"events": [event(), event(), {"evtid": "no-such-event"}]})  # 1002 x2, 7004
    post({"events": [event(), {"evtid": "server-down"}]})              # 1002, 7025
    post({"events": [event(), event()]})                               # 7020 (1 token left)
    post({"events": [event()]}, key="wrong")                           # 7001
    post(b'{"events": [')                                              # 7000
    post(b"<request><events>", content_type="application/xml")         # 7027
    post({"events": []})                                               # 7003
    post(b"x" * 8192)                                                  # 413: 7004
    configure(database_url=sqlite_url, broker_url="redis://127.0.0.1:1/0")
    create_app().test_client().post(PATH, json={"events": [event()]},  # broker down: 7005
                                    headers={"key": "demo-key"})

    moved = {code: received(code) - before[code] for code in Code}
    assert moved == {Code.QUEUED: 3, Code.INVALID_VALUES: 2, Code.MANDATORY_CUSTOM_MISSING: 1,
                     Code.RATE_LIMITED: 1, Code.AUTH_FAILED: 1, Code.INVALID_JSON: 1,
                     Code.INVALID_XML: 1, Code.MANDATORY_MISSING: 1, Code.INTERNAL_ERROR: 1}
    scrape = client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.content_type.startswith("text/plain")
    assert 'eventdesk_events_received_total{channel="webex",code="7020"}' in scrape.text


def test_outcomes_are_counted_only_when_committed() -> None:
    engine = create_engine("sqlite://")
    calls: list[str] = []
    with Session(engine) as session:
        session.execute(text("SELECT 1"))
        observe.after_commit(session, lambda: calls.append("first"))
        with session.begin_nested():  # a savepoint released: not the commit yet
            session.execute(text("SELECT 1"))
        with pytest.raises(ZeroDivisionError), session.begin_nested():  # nor rolled back
            raise ZeroDivisionError
        assert calls == []
        session.commit()
        assert calls == ["first"]

        session.execute(text("SELECT 1"))
        observe.after_commit(session, lambda: calls.append("rolled back"))
        session.rollback()
        session.execute(text("SELECT 1"))
        session.commit()
        assert calls == ["first"]


def test_processed_records_outcome_and_latency_after_commit() -> None:
    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    created = {"channel": "mail", "outcome": "created"}
    expired = {"channel": "mail", "outcome": "expired"}
    before = (sample("eventdesk_events_processed_total", created),
              sample("eventdesk_events_processed_total", expired),
              sample("eventdesk_event_latency_seconds_count", {"channel": "mail"}))
    engine = create_engine("sqlite://")
    with Session(engine) as session:
        session.execute(text("SELECT 1"))
        observe.processed(session, "mail", datetime.now(UTC), [
            ("t1", "completed", {"action": "created", "request_id": 1}),
            ("t2", "completed", {"action": "created", "request_id": 2}),
            ("t3", "expired", None),
        ])
        assert sample("eventdesk_events_processed_total", created) == before[0]
        session.commit()
    after = (sample("eventdesk_events_processed_total", created),
             sample("eventdesk_events_processed_total", expired),
             sample("eventdesk_event_latency_seconds_count", {"channel": "mail"}))
    assert after == (before[0] + 2, before[1] + 1, before[2] + 3)


def test_stdlib_records_become_json_lines_with_the_bound_context() -> None:
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1,
                               "Task %s succeeded", ("events.process[abc]",), None)
    structlog.contextvars.bind_contextvars(task_id="abc")
    try:
        line = json.loads(formatter.format(record))
    finally:
        structlog.contextvars.unbind_contextvars("task_id")
    assert line["event"] == "Task events.process[abc] succeeded"
    assert (line["level"], line["logger"], line["task_id"]) == ("info", "celery.app.trace", "abc")
    assert line["timestamp"].endswith("Z")


def test_gunicorn_access_log_is_written_only_when_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gunicorn import glogging

    from api import gunicorn_conf

    written: list[tuple[Any, ...]] = []
    monkeypatch.setattr(glogging.Logger, "access", lambda _self, *args: written.append(args))
    logger = object.__new__(gunicorn_conf.Logger)  # its own __init__ would set up handlers
    logger.access("response", "request", {}, 0.01)
    assert written == []
    monkeypatch.setattr(gunicorn_conf._settings, "access_log", True)
    logger.access("response", "request", {}, 0.01)
    assert written == [("response", "request", {}, 0.01)]


# ---------------------------------------------------------------------------------------------
# Real processes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(url: str, body: bytes, key: str = "demo-key",
         content_type: str = "application/json") -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers={
        "key": key, "content-type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as error:
        return json.loads(error.read())  # type: ignore[no-any-return]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


class Role:
    def __init__(self, name: str, args: list[str], env: dict[str, str], folder: Path) -> None:
        self.log_path = folder / f"{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args], cwd=REPO, env=env, stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        return True

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@dataclass
class Running:
    api: Role
    worker: Role
    api_port: int
    worker_port: int
    data_dir: Path

    @property
    def intake(self) -> str:
        return f"http://127.0.0.1:{self.api_port}{PATH}"

    def api_metrics(self) -> str:
        return get(f"http://127.0.0.1:{self.api_port}/metrics")[1].decode()

    def worker_metrics(self) -> str:
        return get(f"http://127.0.0.1:{self.worker_port}/metrics")[1].decode()


@pytest.fixture(scope="module")
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_url: str
) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("roles")
    broker = redis_db_url(request, offset=6)
    api_port, worker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EVENTDESK_", "PROMETHEUS_"))}
    env.update({
        "EVENTDESK_BROKER_URL": broker, "EVENTDESK_DATABASE_URL": sqlite_url,
        "EVENTDESK_SECRET_KEY": "test-secret", "EVENTDESK_DATA_DIR": str(folder / "data"),
        "EVENTDESK_WORKER_METRICS_PORT": str(worker_port),
        "EVENTDESK_RATE_LIMIT_BURST": "20", "EVENTDESK_RATE_LIMIT_PER_SECOND": "0.01",
        "PYTHONPATH": str(REPO),
    })
    roles = Running(
        # DEBUG for the api: its per-request "accepted" lines.
        api=Role("api", ["api", "--port", str(api_port), "--workers", "2", "--threads", "2"],
                 {**env, "EVENTDESK_LOG_LEVEL": "DEBUG"}, folder),
        worker=Role("worker", ["worker", "--concurrency", "2"], env, folder),
        api_port=api_port, worker_port=worker_port, data_dir=folder / "data",
    )
    try:
        wait_until(lambda: roles.api.alive() and _answers(api_port, "/readyz"), 60, 0.2)
        wait_until(lambda: roles.worker.alive() and _answers(worker_port, "/metrics"), 60, 0.2)
        yield roles
    finally:
        roles.api.stop()
        roles.worker.stop()


def _answers(port: int, path: str) -> bool:
    try:
        return get(f"http://127.0.0.1:{port}{path}", timeout=2)[0] == 200
    except OSError:
        return False


def check_with_promtool(exposition: str) -> None:
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, text=True,
                            capture_output=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.xdist_group("metrics")
def test_counters_move_by_exactly_what_was_sent(running: Running) -> None:
    api_before = samples(running.api_metrics())
    worker_before = samples(running.worker_metrics())

    def send(body: Any, **options: str) -> list[dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return post(running.intake, data, **options)["response"]  # type: ignore[no-any-return]

    queued: list[str] = []
    for _ in range(3):                                                    # 1002 x6
        queued += [entry["transid"] for entry in send({"events": [event(), event()]})]
    mixed = send({"events": [event(), {"evtid": "no-such-event"}]})      # 1002, 7004
    queued.append(mixed[0]["transid"])
    expired = send({"expiry": "2020-01-01T00:00:00Z", "events": [event(), event()]})  # 1002 x2
    queued += [entry["transid"] for entry in expired]
    send({"events": [event()]}, key="wrong")                              # 7001
    send(b'{"events": [')                                                 # 7000
    send(b"<request><events>", content_type="application/xml")            # 7027
    send({"events": [{"evtid": "server-down"}]})                          # 7025
    send({"events": []})                                                  # 7003
    assert send({"events": [event() for _ in range(15)]})[0]["code"] == "7020"  # 11 tokens left

    sent = {"1002": 9, "7004": 1, "7001": 1, "7000": 1, "7027": 1, "7025": 1, "7003": 1,
            "7020": 1, "7005": 0}
    api_after = samples(running.api_metrics())
    for code, count in sent.items():
        moved = (value(api_after, "eventdesk_events_received_total", channel="webex", code=code)
                 - value(api_before, "eventdesk_events_received_total", channel="webex",
                         code=code))
        assert moved == count, code

    def processed(found: dict[tuple[str, frozenset[tuple[str, str]]], float], outcome: str
                  ) -> float:
        return value(found, "eventdesk_events_processed_total", channel="webex", outcome=outcome)

    def worker_moved() -> dict[str, float] | None:
        now = samples(running.worker_metrics())
        moved = {outcome: processed(now, outcome) - processed(worker_before, outcome)
                 for outcome in metrics.OUTCOMES}
        return moved if sum(moved.values()) >= 9 else None

    try:
        moved = wait_until(worker_moved, 60, 0.2)
    except AssertionError as exc:
        tail = "\n".join(running.worker.log_path.read_text().splitlines()[-30:])
        raise AssertionError(f"the worker did not process the events:\n{tail}") from exc
    assert moved == {"created": 7, "updated": 0, "unchanged": 0, "expired": 2, "failed": 0}
    after = samples(running.worker_metrics())

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(worker_before, name, **labels)

    assert delta("eventdesk_event_latency_seconds_count", channel="webex") == 9
    assert delta("eventdesk_event_latency_seconds_bucket", channel="webex", le="+Inf") == 9
    # events.process takes its messages in batches (celery-batches): one run per batch, so
    # between one run and one per message (5 requests queued something).
    runs = delta("eventdesk_task_duration_seconds_count", task="events.process")
    assert 1 <= runs <= 5
    assert delta("eventdesk_task_failures_total", task="events.process") == 0
    assert value(after, "eventdesk_dependency_up", dependency="broker") == 1
    assert value(after, "eventdesk_dependency_up", dependency="database") == 1
    wait_until(lambda: value(samples(running.worker_metrics()), "eventdesk_queue_depth",
                             queue="events") == 0, 15, 0.5)

    # Multiprocess mode: both gunicorn workers and both pool processes write their own files.
    assert len(list((running.data_dir / "metrics").glob(
        f"api-{running.api_port}/counter_*.db"))) >= 2
    assert len(list((running.data_dir / "metrics").glob(
        f"worker-{running.worker_port}/counter_*.db"))) >= 2
    check_with_promtool(running.api_metrics())
    check_with_promtool(running.worker_metrics())

    # One log line per decision: accepted or rejected in the api, processed in the worker.
    accepted = [line for line in running.api.lines() if line["event"] == "accepted"]
    assert sorted(t for line in accepted for t in line["transids"]) == sorted(queued)
    assert all(line["role"] == "api" and "timestamp" in line for line in accepted)
    rejected = [line for line in running.api.lines() if line["event"] == "rejected"]
    assert sorted(code for line in rejected for code in line["codes"]) == sorted(
        code for code, count in sent.items() if code != "1002" for _ in range(count))
    done = wait_until(lambda: {line["transid"]: line for line in running.worker.lines()
                               if line["event"] == "processed"} or None, 10)
    assert {t: done[t]["outcome"] for t in queued} == {
        t: "expired" if t in {e["transid"] for e in expired} else "created" for t in queued}
    assert all(done[t]["task"] == "events.process" and done[t]["task_id"] for t in queued)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.xdist_group("metrics")
def test_prometheus_scrapes_eventdesk(running: Running, tmp_path: Path) -> None:
    binary = require_tool("prometheus", "prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "deploy" / "prometheus" / "rules.yml")],
        "scrape_configs": [
            {"job_name": "eventdesk-api",
             "static_configs": [{"targets": [f"127.0.0.1:{running.api_port}"]}]},
            {"job_name": "eventdesk-worker",
             "static_configs": [{"targets": [f"127.0.0.1:{running.worker_port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    post(running.intake, json.dumps({"events": [event()]}).encode())
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/api/v1"

    def query(promql: str) -> list[dict[str, Any]]:
        status, body = get(f"{base}/query?query={urllib.parse.quote(promql)}")
        assert status == 200, body
        return json.loads(body)["data"]["result"]  # type: ignore[no-any-return]

    try:
        wait_until(lambda: server.poll() is None and _answers(port, "/-/ready"), 30, 0.2)
        queued = value(samples(running.api_metrics()), "eventdesk_events_received_total",
                       channel="webex", code="1002")
        assert queued >= 1
        result = wait_until(lambda: [
            r for r in query('eventdesk_events_received_total{code="1002"}')
            if float(r["value"][1]) == queued] or None, 30, 0.5)
        assert result[0]["metric"]["job"] == "eventdesk-api"
        up = wait_until(lambda: query('up{job="eventdesk-worker"} == 1') or None, 30, 0.5)
        assert len(up) == 1
        assert wait_until(lambda: query('eventdesk_queue_depth{queue="events"}') or None, 30, 0.5)
        # The shipped alert rules load and evaluate against real series without errors.
        groups = json.loads(get(f"{base}/rules")[1])["data"]["groups"]
        assert {group["name"] for group in groups} >= {"eventdesk-intake", "eventdesk-health"}
        wait_until(lambda: all(rule.get("health") == "ok" for group in json.loads(
            get(f"{base}/rules")[1])["data"]["groups"] for rule in group["rules"]), 15, 0.5)
        firing = query('ALERTS{alertstate="firing",alertname=~"EventdeskWorkersDown|'
                       'EventdeskApiDown|EventdeskDependencyDown"}')
        assert firing == []
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
