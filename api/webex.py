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
    rejected = [entry["code"] for entry in answer.entries if entry["code"] != Code.QUEUED]
    # Accepted events are logged again when processed ("processed", worker); a line for each
    # request at thousands a second is DEBUG. Refusals are rarer and each one is a finding.
    if queued:
        log.debug("accepted", channel="webex", queued=len(queued), transids=queued)
    if rejected:
        log.info("rejected", channel="webex", status=answer.status, codes=rejected)
    return respond(answer)
