"""``POST /resources/v1/events/externalevent/``: the Webex Connect Custom Event API."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request

from shared import metrics
from shared.intake.codes import Code
from shared.intake.service import Answer, WebexIntake
from shared.logs import get_logger

bp = Blueprint("webex", __name__)
log = get_logger(__name__)
PATH = "/resources/v1/events/externalevent/"


def respond(answer: Answer) -> Response:
    metrics.record_received("webex", answer.entries)
    response = Response(
        json.dumps({"response": answer.entries}), answer.status, mimetype="application/json"
    )
    response.headers.update(answer.headers)
    return response


@bp.post(PATH, strict_slashes=False)
def external_event() -> Response:
    intake: WebexIntake = current_app.extensions["eventdesk.webex"]
    answer = intake.handle(request.headers.get("key"), request.mimetype, request.get_data())
    queued = [entry["transid"] for entry in answer.entries if entry["code"] == Code.QUEUED]
    if queued:
        log.info("accepted", channel="webex", queued=len(queued),
                 rejected=len(answer.entries) - len(queued), transids=queued)
    return respond(answer)
