"""The baseline for the intake benchmark: the least a Flask front door can do.

One route, ``POST /resources/v1/events/externalevent/``: validate the JSON body with a small
pydantic model, one raw Redis ``RPUSH`` of the body to the list ``bench:baseline``, and answer
``1002 Queued`` per event. Served by gunicorn as ``bench.baseline_app:app``; the Redis URL comes
from ``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``).
"""

from __future__ import annotations

import json
import os
import uuid

import redis
from flask import Flask, Response, request
from pydantic import BaseModel, ValidationError

PATH = "/resources/v1/events/externalevent/"
QUEUE_KEY = "bench:baseline"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


class Event(BaseModel):
    evtid: str
    correlationid: str | None = None
    parameters: dict[str, str] = {}


class Body(BaseModel):
    events: list[Event]


_client: redis.Redis | None = None
_client_pid = 0


def client() -> redis.Redis:
    """One Redis client per process (made after gunicorn forks the worker)."""
    global _client, _client_pid  # noqa: PLW0603
    pid = os.getpid()
    if _client is None or _client_pid != pid:
        _client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL))
        _client_pid = pid
    return _client


def _json(payload: object, status: int) -> Response:
    return Response(json.dumps(payload), status, mimetype="application/json")


app = Flask(__name__)


@app.post(PATH, strict_slashes=False)
def external_event() -> Response:
    data = request.get_data()
    try:
        body = Body.model_validate_json(data)
    except ValidationError:
        return _json({"response": [{"code": "7004", "description": "Invalid parameters"}]}, 400)
    client().rpush(QUEUE_KEY, data)
    entries = [
        {"code": "1002", "description": "Queued", "transid": uuid.uuid4().hex}
        for _ in body.events
    ]
    return _json({"response": entries}, 200)
