"""``POST /resources/v1/events/externalevent/``: the Webex Connect Custom Event API.

The busiest route of all, so it is served by plain WSGI in front of the Flask app instead of a
Flask view: on the intake benchmark Flask's per-request machinery (request context, routing,
response object, hooks) cost more CPU than everything eventdesk itself does for a request
(bench/README.md, "Where the intake's CPU goes"). Every other path goes on to Flask untouched.
What a Flask view gave this route is done here: the body size limit (413), the media type, JSON
answers for any method but POST (405), and any unexpected error answered 7005 and logged, never
a 500.
The rules stay in ``shared.intake.webex.service.WebexIntake``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from api.body import read_limited
from api.operations import Answer as Documented
from api.operations import Operation
from shared import metrics
from shared.codes import Code, IntakeError
from shared.intake.webex.schemas import WebexEventRequest, WebexResponse
from shared.intake.webex.service import Answer, WebexIntake
from shared.logs import get_logger

log = get_logger(__name__)
PATH = "/resources/v1/events/externalevent/"
_PATHS = {PATH, PATH.rstrip("/")}

MEDIA_TYPES = ("application/json", "application/xml", "text/xml")


def _codes(status: int, description: str, headers: dict[str, str] | None = None) -> Documented:
    """An HTTP status's answer and the Webex codes answered with it (shared/codes.py)."""
    codes = "; ".join(f"`{code.value}` {code.description}" for code in Code
                      if code.http_status == status)
    return Documented(f"{description}: {codes}", WebexResponse, headers=headers or {})


# Not served by Flask, so documented here rather than through api.operations.route.
WEBEX = Operation(
    "POST", PATH, "Webex Connect Custom Event v1",
    description=(
        "One entry per event in `response`, in order; a fault of the whole request answers one "
        "entry without a transid. The HTTP status is the first entry's code's when no event "
        "was queued, else 200. The body is JSON or XML (`<request>`, each event an `<event>` "
        "in `<events>`); every answer is JSON."),
    security=("key",),
    body=dict.fromkeys(MEDIA_TYPES, WebexEventRequest),
    body_required=True,
    responses={
        200: _codes(200, "At least one event queued; the others' entries say why not"),
        400: _codes(400, "Nothing queued"),
        401: _codes(401, "No valid key"),
        413: Documented(f"`{Code.INVALID_VALUES.value}`: the body is larger than "
                        "EVENTDESK_MAX_BODY_BYTES", WebexResponse),
        429: _codes(429, "The key's rate limit", {"Retry-After": "Seconds to wait"}),
        503: _codes(503, "Nothing queued: the broker or the database is unreachable"),
    },
)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _reply(
    start_response: StartResponse, status: int, body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}", [
        ("Content-Type", "application/json"), ("Content-Length", str(len(data))),
        *(headers or {}).items(),
    ])
    return [data]


def _mimetype(environ: dict[str, Any]) -> str:
    return str(environ.get("CONTENT_TYPE", "")).split(";", 1)[0].strip().lower()


class FrontDoor:
    """WSGI middleware: this route here, every other one to ``app`` (the Flask app)."""

    def __init__(self, app: WSGIApp, intake: WebexIntake, max_body_bytes: int) -> None:
        self._app = app
        self._intake = intake
        self._limit = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in _PATHS:
            return self._app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return _reply(start_response, 405, {"message": "only POST is allowed here"},
                          {"Allow": "POST"})
        try:
            answer = self._answer(environ)
        except Exception:  # a bug must not become a 500 or a stack trace: 7005, logged
            log.exception("unhandled error on the Webex intake")
            answer = Answer.failure(IntakeError(Code.INTERNAL_ERROR))
        # After the answer is settled: a log line that fails (stderr gone: OSError, or
        # ValueError once closed) must not turn events already queued into a 7005.
        with contextlib.suppress(OSError, ValueError):
            _log_answer(answer)
        metrics.record_received("webex", answer.entries)
        return _reply(start_response, answer.status, {"response": answer.entries},
                      answer.headers)

    def _answer(self, environ: dict[str, Any]) -> Answer:
        try:
            body = read_limited(environ, self._limit)
        except ValueError:  # a Content-Length that is not a number
            return Answer.failure(IntakeError(Code.INVALID_VALUES, "bad Content-Length"))
        if body is None:
            answer = Answer.failure(IntakeError(
                Code.INVALID_VALUES, f"the body is larger than {self._limit} bytes"))
            answer.status = 413
            return answer
        return self._intake.handle(environ.get("HTTP_KEY"), _mimetype(environ), body)


def _log_answer(answer: Answer) -> None:
    queued = [entry["transid"] for entry in answer.entries if entry["code"] == Code.QUEUED]
    rejected = [entry["code"] for entry in answer.entries if entry["code"] != Code.QUEUED]
    # Accepted events are logged again when processed ("processed", worker); a line for
    # each request at thousands a second is DEBUG. Refusals are rarer, each one a finding.
    if queued:
        log.debug("accepted", channel="webex", queued=len(queued), transids=queued)
    if rejected:
        log.info("rejected", channel="webex", status=answer.status, codes=rejected)
