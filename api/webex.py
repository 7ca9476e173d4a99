"""``POST /resources/v1/events/externalevent/``: the Webex Connect Custom Event API."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request

from shared.intake.service import Answer, WebexIntake

bp = Blueprint("webex", __name__)
PATH = "/resources/v1/events/externalevent/"


def respond(answer: Answer) -> Response:
    response = Response(
        json.dumps({"response": answer.entries}), answer.status, mimetype="application/json"
    )
    response.headers.update(answer.headers)
    return response


@bp.post(PATH, strict_slashes=False)
def external_event() -> Response:
    intake: WebexIntake = current_app.extensions["eventdesk.webex"]
    return respond(intake.handle(request.headers.get("key"), request.mimetype, request.get_data()))
