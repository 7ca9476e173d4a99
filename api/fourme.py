"""``POST /v1/events``: the 4me Events API. The rules are in shared/intake/fourme/service.py."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from api.body import read_limited
from api.errors import reply_json
from shared import metrics
from shared.intake.fourme.service import FourMeIntake, Reply
from shared.logs import get_logger

bp = Blueprint("fourme", __name__)
log = get_logger(__name__)
PATH = "/v1/events"


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


@bp.post(PATH)
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
    metrics.record_received("4me", [{"code": str(reply.status)}])
    # As for Webex events (api/webex.py): accepted at DEBUG, refused at INFO.
    if reply.transid is not None:
        log.debug("accepted", channel="4me", status=reply.status, transids=[reply.transid])
    elif reply.status >= 400:
        log.info("rejected", channel="4me", status=reply.status)
    return respond(reply)
