"""``POST /v1/events``: the 4me Events API. The rules are in shared/intake/fourme.py."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request

from shared import metrics
from shared.intake.fourme import FourMeIntake, Reply
from shared.logs import get_logger

bp = Blueprint("fourme", __name__)
log = get_logger(__name__)
PATH = "/v1/events"


def respond(reply: Reply) -> Response:
    response = Response(json.dumps(reply.body), reply.status, mimetype="application/json")
    response.headers.update(reply.headers)
    return response


@bp.post(PATH)
def events() -> Response:
    intake: FourMeIntake = current_app.extensions["eventdesk.fourme"]
    reply = intake.handle(
        authorization=request.headers.get("Authorization"),
        account=request.headers.get("X-4me-Account"),
        content_type=request.mimetype,
        read_body=request.get_data,
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
