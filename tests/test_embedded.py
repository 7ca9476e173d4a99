"""The quick start as a newcomer runs it: ``eventdesk run --demo`` in an empty folder, over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import KNOWN_SETTINGS

from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.slow

CURL_BODY = {"events": [{"evtid": "server-down", "correlationid": "c1", "parameters": {
    "host": "db1", "subject": "Server Down", "source": "nagios", "sourceID": "42"}}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={
        "key": "demo-key", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a newcomer's shell: no EVENTDESK_ settings but ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTDESK_")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


# How a newcomer calls eventdesk from the checkout; an installed one is its venv's script.
FROM_CHECKOUT = (sys.executable, "-m", "shared.cli")


class Service:
    def __init__(self, folder: Path, *args: str, port: int | None = None,
                 env: dict[str, str] | None = None,
                 eventdesk: tuple[str, ...] = FROM_CHECKOUT) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.log = (folder / "run.log").open("w")
        # A metrics port of its own unless told: two runs at once must not share 9808.
        metrics = [] if "--metrics-port" in args else ["--metrics-port", str(free_port())]
        # Likewise the SMTP listener's port and its metrics exporter's.
        smtp = [] if "--smtp-port" in args else ["--smtp-port", str(free_port())]
        self.proc = subprocess.Popen(
            [*eventdesk, "run", "--demo", "--port", str(self.port),
             *metrics, *smtp, *args],
            cwd=folder, env={"EVENTDESK_SMTP_METRICS_PORT": "0", **(env or clean_env())},
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return (self.folder / "run.log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGTERM, so that `run` stops its worker and api too (a SIGKILL would orphan them).
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def up(self) -> bool:
        assert self.proc.poll() is None, (self.folder / "run.log").read_text()
        try:
            return call(self.base + "/readyz")[0] == 200
        except OSError:
            return False

    def announced(self) -> bool:
        """Whether ``run`` has said it is listening: on both ports, HTTP and SMTP."""
        assert self.proc.poll() is None, self.output()
        return "eventdesk listening on" in self.output()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(tmp_path)
    wait_until(running.up, 60, 0.3)
    yield running
    running.stop()


def test_demo_turns_the_readme_curl_into_a_request(service: Service) -> None:
    the_curl_becomes_a_request(service)
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(40) == 0


def the_curl_becomes_a_request(service: Service) -> None:
    status, body = call(service.base + "/resources/v1/events/externalevent/", CURL_BODY)
    assert status == 200
    (entry,) = body["response"]
    assert (entry["code"], entry["description"], entry["correlationid"]) == ("1002", "Queued", "c1")

    def done() -> Any:
        view = call(service.base + f"/v1/transactions/{entry['transid']}")[1]
        return view if view["status"] == "completed" else None

    view = wait_until(done, 30, 0.2)
    request_id = view["outcome"]["request_id"]
    database = service.folder / ".eventdesk" / "eventdesk.sqlite"
    with sqlite3.connect(database) as connection:
        subject, source = connection.execute(
            "SELECT subject, source FROM requests WHERE id = ?", (request_id,)).fetchone()
    assert (subject, source) == ("Server Down", "nagios")


def test_run_says_listening_only_once_the_port_answers_and_warns_of_a_busy_metrics_port(
    tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        metrics_port = busy.getsockname()[1]
        running = Service(tmp_path, "--metrics-port", str(metrics_port))
        try:
            # run's own line (the SMTP listener logs a line of its own with "listening" in it).
            wait_until(lambda: "eventdesk listening on" in running.output()
                       or running.proc.poll() is not None, 60, 0.02)
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", running.port)) == 0, running.output()
        finally:
            running.proc.send_signal(signal.SIGTERM)
            running.proc.wait(40)
            running.log.close()
    warnings = [line for line in running.output().splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1, running.output()
    assert f"127.0.0.1:{metrics_port} is already in use" in warnings[0]
    assert "EVENTDESK_WORKER_METRICS_PORT" in warnings[0]
    assert "--metrics-port" in warnings[0]


def test_run_on_a_taken_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli", "run", "--demo", "--port", str(port)],
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
            check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (f"Error: 127.0.0.1:{port} is already in use: stop what "
                                   "listens there, or choose another --port")


def test_two_api_instances_have_control_sockets_of_their_own(tmp_path: Path) -> None:
    from tests.resilience.harness import Api

    if all(setting.name != "control_socket" for setting in KNOWN_SETTINGS):
        pytest.skip("this gunicorn has no control socket")
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path),
           "EVENTDESK_DATA_DIR": str(tmp_path / "data")}
    first = Api(env, tmp_path / "first.log", workers=1)
    second = Api(env, tmp_path / "second.log", workers=1)
    try:
        expected = {tmp_path / f"eventdesk-127.0.0.1-{api.port}.ctl" for api in (first, second)}
        wait_until(lambda: set(tmp_path.glob("*.ctl")) == expected, 10, 0.1)
    finally:
        second.stop()
        first.stop()


def test_demo_takes_the_mail_one_liners_of_docs_mail(tmp_path: Path) -> None:
    """docs/mail.md's two one-liners, as written but for the port: a request, then a note."""
    smtp_port = free_port()
    lines = [line for line in (REPO / "docs" / "mail.md").read_text().splitlines()
             if line.startswith("python3 -c ") and "smtplib" in line]
    assert len(lines) == 2
    running = Service(tmp_path, "--smtp-port", str(smtp_port))
    try:
        wait_until(running.announced, 60, 0.3)  # as a user waits: for what run says
        for line in lines:
            subprocess.run(line.replace("2525", str(smtp_port)), shell=True, check=True,
                           timeout=30)
        database = running.folder / ".eventdesk" / "eventdesk.sqlite"

        def noted() -> Any:
            with sqlite3.connect(database) as connection:
                rows = connection.execute(
                    "SELECT r.impact, r.source, r.source_id, n.text FROM requests r JOIN notes n "
                    "ON n.request_id = r.id WHERE r.source_id = 'demo-1@widget.com' "
                    "ORDER BY n.id").fetchall()
            return rows if len(rows) == 2 else None

        assert wait_until(noted, 30, 0.2) == [
            ("high", "Email", "demo-1@widget.com", "The printer on floor 3 is on fire."),
            ("high", "Email", "demo-1@widget.com", "It is out now.")]
    finally:
        running.stop()
