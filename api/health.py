"""``/healthz`` (the process answers) and ``/readyz`` (the broker reachable, and the database
reported; and how many of this process's ``Prefer: wait`` slots are taken,
shared/intake/waiters.py).

Ready means the intake can take events: the broker. The database is reported, not required:
with it down the intake still answers for the keys and event definitions it has cached
(docs/operations.md, "A database outage, seen by the api"), and a readiness probe that failed
on it would take every api out of service at once (a Kubernetes Service with no endpoints
refuses every caller)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from flask import Blueprint, Response, current_app, json
from sqlalchemy import text

from api.operations import Answer, Operation, route
from shared.db.engine import get_engine
from shared.intake.waiters import WaitSlots
from shared.messaging.publish import Publisher

bp = Blueprint("health", __name__)


def _json(body: dict[str, object], status: int) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")


STATUS = {"type": "object", "properties": {"status": {"type": "string"}},
          "required": ["status"]}
HEALTHZ = Operation("GET", "/healthz", "The process answers",
                    {200: Answer("Alive", STATUS)})
READYZ = Operation(
    "GET", "/readyz", "The broker reachable; the database reported",
    {200: Answer("Ready (the database may be unreachable: `database` says); `waiters`: this "
                 "process's Prefer: wait callers", STATUS),
     503: Answer("The broker is unreachable", STATUS)})


class DatabaseCheck:
    """``SELECT 1``, waited for at most WAIT seconds: a database that stopped answering holds a
    check for the pool's wait, the connect timeout and the statement timeout (2 + 2 + 3.5 s),
    longer than a readiness probe waits (3 s): the probe would fail for what readiness does
    not even require. The check goes on in a thread of its own, one at a time: while one
    runs, the next caller waits on it."""

    WAIT = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Future[None] | None = None

    def __call__(self) -> str:
        with self._lock:
            if self._running is None or self._running.done():
                started: Future[None] = Future()
                threading.Thread(target=self._check, args=(started,), daemon=True,
                                 name="readyz-database").start()
                self._running = started  # only once its thread runs: it will be done
            running = self._running
        try:
            running.result(timeout=self.WAIT)
        except TimeoutError:
            return f"no answer within {self.WAIT:g} s"
        except Exception as exc:  # any driver's failure: reported
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    @staticmethod
    def _check(result: Future[None]) -> None:
        try:
            with get_engine().connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # handed to the caller, who reports it
            result.set_exception(exc)
        else:
            result.set_result(None)


@route(bp, HEALTHZ)
def healthz() -> Response:
    return _json({"status": "ok"}, 200)


@route(bp, READYZ)
def readyz() -> Response:
    checks: dict[str, str] = {}
    publisher: Publisher = current_app.extensions["eventdesk.publisher"]
    try:
        publisher.ping()
        checks["broker"] = "ok"
    except Exception as exc:  # any transport's failure means "not ready"
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    database: DatabaseCheck = current_app.extensions["eventdesk.database_check"]
    checks["database"] = database()
    ready = checks["broker"] == "ok"
    # Full slots do not make the process unready: it still takes events (and answers 202).
    waiters: WaitSlots = current_app.extensions["eventdesk.waiters"]
    return _json({"status": "ready" if ready else "unavailable", **checks,
                  "waiters": {"waiting": waiters.taken, "max": waiters.limit}},
                 200 if ready else 503)
