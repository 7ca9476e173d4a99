"""Notification deliveries for operators: list them, replay one.

``GET /v1/deliveries?status=dead&limit=50&before=<cursor>``: the caller's account's deliveries,
newest first. ``POST /v1/transactions/<transid>/redeliver``: start a finished delivery over with
the same webhook-id and a fresh schedule (a delivery's attempts: ``GET /v1/transactions/<id>``).
"""

from __future__ import annotations

import contextlib
import json as stdjson
from datetime import UTC, datetime
from typing import Annotated

from flask import Blueprint, Response, current_app, json
from pydantic import Field

from api.auth import requires_key
from api.errors import error_json
from api.operations import KEY_OR_BEARER, Answer, Message, Operation, Transid, route
from api.query import Choice, Query, Whole
from shared.db.engine import session_scope
from shared.ids import well_formed
from shared.messaging import NOTIFY_DELIVER, NOTIFY_QUEUE
from shared.messaging.publish import Publisher, PublishError, task_message
from shared.notify import rules
from shared.notify.delivery import REDELIVER_MISSING, Replay, redeliver
from shared.notify.schemas import DeliveryList, Redelivery
from shared.notify.views import list_deliveries
from shared.records.keys import KeyInfo

bp = Blueprint("deliveries", __name__)

MAX_LIMIT = 200
DEFAULT_LIMIT = 50


class DeliveryQuery(Query):
    status: Annotated[str, Choice(rules.STATES)] | None = None
    limit: Annotated[int, Whole(1, MAX_LIMIT)] = DEFAULT_LIMIT
    before: Annotated[int, Whole(0)] | None = Field(
        default=None, description="The previous page's `next`.")


REFUSED = Answer("No valid key", Message)
LIST = Operation(
    "GET", "/v1/deliveries", "The account's notification deliveries, newest first",
    security=KEY_OR_BEARER, query=DeliveryQuery,
    responses={200: Answer("A page of deliveries", DeliveryList),
               400: Answer("A bad parameter, named", Message), 401: REFUSED})
REDELIVER = Operation(
    "POST", "/v1/transactions/{transid}/redeliver",
    "Send a finished notification again (same webhook-id, fresh schedule)",
    security=KEY_OR_BEARER, params=Transid,
    responses={202: Answer("Queued", Redelivery), 401: REFUSED,
               404: Answer("No notification for this transaction in this account", Message),
               409: Answer("The notification is pending or being sent", Message)})


def _json(body: dict[str, object], status: int = 200) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")


@route(bp, LIST)
@requires_key()
def deliveries(key: KeyInfo) -> Response:
    query = LIST.args()
    with session_scope() as session:
        page = list_deliveries(session, key.account_id, status=query.status, limit=query.limit,
                               before=query.before)
    return _json(page.model_dump(mode="json", exclude_none=True))


@route(bp, REDELIVER)
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
