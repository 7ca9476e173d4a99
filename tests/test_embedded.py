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


class Service:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTDESK_")}
        self.log = (folder / "run.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "run", "--demo", "--port", str(self.port)],
            cwd=folder, env={**env, "PYTHONPATH": str(REPO)}, stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def up(self) -> bool:
        assert self.proc.poll() is None, (self.folder / "run.log").read_text()
        try:
            return call(self.base + "/readyz")[0] == 200
        except OSError:
            return False


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(tmp_path)
    wait_until(running.up, 60, 0.3)
    yield running
    if running.proc.poll() is None:
        # SIGTERM, so that `run` stops its worker and api too (a SIGKILL would orphan them).
        running.proc.send_signal(signal.SIGTERM)
        try:
            running.proc.wait(40)
        except subprocess.TimeoutExpired:
            running.proc.kill()
    running.log.close()


def test_demo_turns_the_readme_curl_into_a_request(service: Service) -> None:
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

    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(40) == 0
