"""Notification deliveries for operators: list them, replay one.

``GET /v1/deliveries?status=dead&limit=50&before=<cursor>``: the caller's account's deliveries,
newest first. ``POST /v1/transactions/<transid>/redeliver``: start a finished delivery over with
the same webhook-id and a fresh schedule (a delivery's attempts: ``GET /v1/transactions/<id>``).
"""

from __future__ import annotations

import contextlib
import json as stdjson
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, json

from api.auth import requires_key
from api.errors import error_json
from api.query import argument
from shared.db.engine import session_scope
from shared.ids import well_formed
from shared.messaging import NOTIFY_DELIVER, NOTIFY_QUEUE
from shared.messaging.publish import Publisher, PublishError, task_message
from shared.notify import rules
from shared.notify.delivery import REDELIVER_MISSING, Replay, redeliver
from shared.notify.schemas import Redelivery
from shared.notify.views import list_deliveries
from shared.records.keys import KeyInfo
from shared.requests.fields import parse_choice, parse_id, parse_int

bp = Blueprint("deliveries", __name__)

MAX_LIMIT = 200
DEFAULT_LIMIT = 50


def _json(body: dict[str, object], status: int = 200) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")


@bp.get("/v1/deliveries")
@requires_key()
def deliveries(key: KeyInfo) -> Response:
    status = argument("status", lambda raw: parse_choice(raw, rules.STATES))
    limit = argument("limit", lambda raw: parse_int(raw, 1, MAX_LIMIT)) or DEFAULT_LIMIT
    before = argument("before", parse_id)
    with session_scope() as session:
        page = list_deliveries(session, key.account_id, status=status, limit=limit, before=before)
    return _json(page.model_dump(mode="json", exclude_none=True))


@bp.post("/v1/transactions/<transid>/redeliver")
@requires_key()
def redeliver_transaction(key: KeyInfo, transid: str) -> Response:
    started: Replay | str = REDELIVER_MISSING
    if well_formed(transid):
        with session_scope() as session:
            started = redeliver(session, key.account_id, transid, datetime.now(UTC))
    if started == REDELIVER_MISSING:
        return error_json(404, "no notification for this transaction")
    if not isinstance(started, Replay):
        return error_json(409, "the notification is on its way already")
    publisher: Publisher = current_app.extensions["eventdesk.publisher"]
    message = task_message(NOTIFY_DELIVER, NOTIFY_QUEUE, stdjson.dumps([started.delivery_id]))
    # Not queued (rate limit, broker down): it is pending and due, so the sweeper queues it.
    with contextlib.suppress(PublishError):
        publisher.publish(message, {f"redeliver:{key.account_id}": 1})
    answer = Redelivery(transid=transid, status="pending", message_id=started.message_id)
    return _json(answer.model_dump(mode="json"), 202)
