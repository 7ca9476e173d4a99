"""Callers waiting for outcomes (``Prefer: wait``) never starve the intake (issue 10, item 8).

No worker runs, so nothing completes and every waiting caller would wait its full time. One
gunicorn process of 8 threads takes 16 such callers, then a Webex event: it must get its 1002 at
once, and ``/readyz`` says how many callers wait.
"""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared.db.migrate import upgrade
from tests.conftest import load_demo, wait_until
from tests.resilience.harness import WEBEX_PATH, Api, private_redis, service_env

pytestmark = [pytest.mark.resilience, pytest.mark.slow]

WAITERS = 16
WAIT_SECONDS = 6
MAX_WAITERS = 3


def request(port: int, method: str, path: str, body: dict[str, Any] | None,
            headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, json.dumps(body) if body else None,
                           {"content-type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def test_waiting_callers_leave_threads_for_the_intake(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'eventdesk.sqlite'}"
    upgrade(database)
    load_demo(database)
    with private_redis(tmp_path / "redis", aof=False) as broker:
        env = service_env(broker.url, database,
                          EVENTDESK_MAX_WAITERS_PER_PROCESS=str(MAX_WAITERS))
        api = Api(env, tmp_path / "api.log", workers=1)
        try:
            def wait_call(number: int) -> tuple[float, int, dict[str, str]]:
                started = time.monotonic()
                status, headers, _ = request(
                    api.port, "POST", "/v1/events", {"subject": f"waiting {number}"},
                    {"Authorization": "Bearer demo-key", "X-4me-Account": "wdc",
                     "Prefer": f"wait={WAIT_SECONDS}"})
                return time.monotonic() - started, status, headers

            with ThreadPoolExecutor(WAITERS) as pool:
                waiting = [pool.submit(wait_call, number) for number in range(WAITERS)]

                def all_slots_taken() -> Any:
                    _, _, body = request(api.port, "GET", "/readyz", None, {})
                    return body["waiters"] == {"waiting": MAX_WAITERS, "max": MAX_WAITERS}

                wait_until(all_slots_taken, 5, 0.05)
                started = time.monotonic()
                status, _, body = request(
                    api.port, "POST", WEBEX_PATH,
                    {"events": [{"evtid": "server-down", "parameters": {"host": "db1"}}]},
                    {"key": "demo-key"})
                webex_seconds = time.monotonic() - started
                answers = [future.result() for future in waiting]
        finally:
            api.stop()

    assert (status, body["response"][0]["code"]) == (200, "1002")
    assert webex_seconds < 1.5, f"the Webex event waited {webex_seconds:.1f} s"
    applied = [a for a in answers if "Preference-Applied" in a[2]]
    at_once = [a for a in answers if "Preference-Applied" not in a[2]]
    assert {status for _, status, _ in answers} == {202}
    assert len(applied) == MAX_WAITERS
    assert all(seconds >= WAIT_SECONDS - 0.5 for seconds, _, _ in applied)
    assert all(seconds < 1.5 for seconds, _, _ in at_once)
