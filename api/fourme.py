"""``POST /v1/events``: the 4me Events API. The rules are in shared/intake/fourme/service.py."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from api.body import read_limited
from api.errors import reply_json
from api.operations import Answer, Header, Operation, route
from api.query import Query
from shared import metrics
from shared.intake.fourme.schemas import FourMeError, FourMeEventParameters, FourMeQueued
from shared.intake.fourme.service import FORM, MAX_WAIT_SECONDS, FourMeIntake, Reply
from shared.logs import get_logger
from shared.requests.views import RequestView

bp = Blueprint("fourme", __name__)
log = get_logger(__name__)
PATH = "/v1/events"


class EventQuery(Query, FourMeEventParameters):  # type: ignore[misc,valid-type]
    """The same fields in the query string (the service checks them: check_fields)."""


ERROR = Answer("`message`; with 422, `errors`: the fields at fault", FourMeError)
EVENTS = Operation(
    "POST", PATH, "4me Events API: create or update a request from an event",
    description=(
        "Parameters as a JSON body, a form body or the query string (the body wins); "
        "`subject` is required unless `template_id` is given. "
        f"`Prefer: wait=N` (N <= {MAX_WAIT_SECONDS}) waits for the outcome."),
    security=("bearer",), query=EventQuery,
    headers=(
        Header("X-4me-Account", "The account id: the token's account.", required=True),
        Header("Prefer", f"`wait=N`: wait up to N seconds (at most {MAX_WAIT_SECONDS}) "
               "for the outcome."),
    ),
    body={"application/json": FourMeEventParameters, FORM: FourMeEventParameters},
    responses={
        200: Answer("Prefer: wait: the event matched this request", RequestView),
        201: Answer("Prefer: wait: the request the event created", RequestView),
        202: Answer("Queued; Location: the transaction", FourMeQueued,
                    headers={"Location": "/v1/transactions/<transid>", "X-Transid": "transid"}),
        **dict.fromkeys((400, 401, 413, 415, 422, 429, 503), ERROR),
    },
)


def respond(reply: Reply) -> Response:
    return reply_json(reply.status, reply.body, reply.headers)


def _read_body() -> bytes:
    try:
        body = read_limited(request.environ, current_app.config["MAX_CONTENT_LENGTH"])
    except ValueError as exc:
        raise BadRequest("bad Content-Length") from exc
    if body is None:
        raise RequestEntityTooLarge
    return body


@route(bp, EVENTS)
def events() -> Response:
    intake: FourMeIntake = current_app.extensions["eventdesk.fourme"]
    reply = intake.handle(
        authorization=request.headers.get("Authorization"),
        account=request.headers.get("X-4me-Account"),
        content_type=request.mimetype,
        read_body=_read_body,
        query=request.args.items(multi=True),
        prefer=", ".join(request.headers.getlist("Prefer")) or None,
    )
    # Counted as intake answered it: an event queued is 202, though Prefer: wait answered later
    # with what the worker made of it (201, 200, or 422 for an event that failed there).
    code = "202" if reply.transid is not None else str(reply.status)
    metrics.record_received("4me", [{"code": code}])
    # As for Webex events (api/webex.py): accepted at DEBUG, refused at INFO.
    if reply.transid is not None:
        log.debug("accepted", channel="4me", status=reply.status, transids=[reply.transid])
    elif reply.status >= 400:
        log.info("rejected", channel="4me", status=reply.status)
    return respond(reply)
