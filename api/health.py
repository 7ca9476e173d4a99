"""``/healthz`` (the process answers) and ``/readyz`` (the broker reachable, and the database
reported; and how many of this process's ``Prefer: wait`` slots are taken,
shared/intake/waiters.py).

Ready means the intake can take events: the broker. The database is reported, not required:
with it down the intake still answers for the keys and event definitions it has cached
(docs/operations.md, "A database outage, seen by the api"), and a readiness probe that failed
on it would take every api out of service at once (a Kubernetes Service with no endpoints
refuses every caller)."""

from __future__ import annotations

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
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver's failure: reported
        checks["database"] = f"unreachable: {type(exc).__name__}"
    ready = checks["broker"] == "ok"
    # Full slots do not make the process unready: it still takes events (and answers 202).
    waiters: WaitSlots = current_app.extensions["eventdesk.waiters"]
    return _json({"status": "ready" if ready else "unavailable", **checks,
                  "waiters": {"waiting": waiters.taken, "max": waiters.limit}},
                 200 if ready else 503)
