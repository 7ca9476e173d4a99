"""``POST /v1/mail``: the 4me Mail API for gateways that forward mail by HTTP (the rules:
shared/mail/service.py); ``GET /v1/requests/<id>/attachments`` and
``GET /v1/mail/<transid>/attachments/<index>``: what mail brought to a request.

``Content-Type: message/rfc822``, the raw message as the body; a key (``key`` header or
``Authorization: Bearer``); the address it was sent to as the ``recipient`` query parameter or
the ``X-4me-Recipient`` header, an address of the key's account (else 422). ``202`` once the
message is stored, with the transid to poll.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

from flask import Blueprint, Response, current_app, json, request
from pydantic import Field
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import BadRequest

from api.auth import requires_key
from api.body import read_limited
from api.errors import error_json
from api.operations import KEY_OR_BEARER, Answer, Header, Message, Operation, Transid, route
from api.query import Query, Text
from api.requests import RequestId
from shared import metrics
from shared.db.engine import session_scope
from shared.logs import get_logger
from shared.mail import queries
from shared.mail.mime import MAX_ATTACHMENTS, media_type
from shared.mail.rules import BadRecipient
from shared.mail.schemas import AttachmentView, MailQueued
from shared.mail.service import EmptyMessage, MailIntake, TooLarge
from shared.mail.views import attachment_views
from shared.records.keys import KeyInfo
from shared.settings import get_settings

bp = Blueprint("mail", __name__)
log = get_logger(__name__)
CONTENT_TYPE = "message/rfc822"


class MailQuery(Query):
    recipient: Text | None = Field(
        default=None, description="The address it was sent to (or X-4me-Recipient).")


class AttachmentPath(Transid):
    index: int = Field(ge=0, le=MAX_ATTACHMENTS - 1)


NO_KEY = Answer("No valid key", Message)
MAIL = Operation(
    "POST", "/v1/mail", "4me Mail API: a raw message, as the mail gateway received it",
    security=KEY_OR_BEARER, query=MailQuery,
    headers=(Header("X-4me-Recipient", "The address it was sent to (or ?recipient=)."),),
    body={CONTENT_TYPE: {"type": "string", "format": "binary"}}, body_required=True,
    responses={
        202: Answer("Stored; its state is at Location", MailQueued,
                    headers={"Location": "/v1/transactions/<transid>", "X-Transid": "transid"}),
        **{status: Answer(text, Message) for status, text in (
            (400, "No recipient, or an empty message"), (401, "No valid key"),
            (413, "Over EVENTDESK_MAIL_MAX_BYTES"), (415, f"Not {CONTENT_TYPE}"),
            (422, "Not an address of the key's account"),
            (503, "Database unreachable: not stored"))}})
ATTACHMENTS = Operation(
    "GET", "/v1/requests/{id}/attachments",
    "Attachments of the mail that created or added notes to the request",
    security=KEY_OR_BEARER, params=RequestId,
    responses={200: Answer("The attachments", list[AttachmentView]), 401: NO_KEY,
               404: Answer("Not a request of this account", Message)})
DOWNLOAD = Operation(
    "GET", "/v1/mail/{transid}/attachments/{index}",
    "One attachment's content (always application/octet-stream)",
    security=KEY_OR_BEARER, params=AttachmentPath,
    responses={200: Answer("The content", {"type": "string", "format": "binary"},
                           media="application/octet-stream",
                           headers={"Content-Disposition": "attachment; filename*=UTF-8''...",
                                    "X-Attachment-Content-Type": "The type the mail gave"}),
               401: NO_KEY, 404: Answer("No such attachment of this account", Message)})


def _refuse(status: int, message: str, result: str) -> Response:
    metrics.mail_received.labels(result=result).inc()
    return error_json(status, message)


def _recipient() -> str | Response:
    """The address the message was sent to; or the refusal of a request that carries none, or
    no raw message."""
    if request.mimetype != CONTENT_TYPE:
        return _refuse(415, f"send the raw message as {CONTENT_TYPE}", "invalid")
    address = MAIL.args().recipient or request.headers.get("X-4me-Recipient")
    return address or _refuse(
        400, "the recipient query parameter or X-4me-Recipient header is required", "invalid")


def _body(intake: MailIntake) -> bytes:
    """The raw message, read within the Mail API's limit: with a Content-Length or chunked (a
    chunked body over it was cut at the limit by werkzeug's reading, and stored cut: api/body.py).
    Raises TooLarge, or BadRequest for a Content-Length that is no number."""
    try:
        raw = read_limited(request.environ, intake.max_bytes)
    except ValueError as exc:
        raise BadRequest("bad Content-Length") from exc
    if raw is None:
        raise TooLarge(f"the message is larger than {intake.max_bytes} bytes")
    return raw


@route(bp, MAIL)
@requires_key()
def mail(key: KeyInfo) -> Response:
    intake: MailIntake = current_app.extensions["eventdesk.mail"]
    address = _recipient()
    if isinstance(address, Response):
        return address
    try:
        raw = _body(intake)
        destination = intake.destination(address, key.account_id)
        transid = intake.accept(raw, destination, f"http key {key.key_id}", datetime.now(UTC))
    except TooLarge as exc:
        return _refuse(413, str(exc), "too_large")
    except EmptyMessage as exc:
        return _refuse(400, str(exc), "invalid")
    except BadRecipient as exc:
        return _refuse(422, str(exc), "refused_recipient")
    except SQLAlchemyError:
        log.warning("mail not accepted: database unreachable")
        return _refuse(503, "the message was not stored; try again shortly", "unavailable")
    metrics.mail_received.labels(result="accepted").inc()
    response = Response(json.dumps(MailQueued(transid=transid).model_dump()), 202,
                        mimetype="application/json")
    response.headers.update({"Location": f"/v1/transactions/{transid}", "X-Transid": transid})
    return response


@route(bp, ATTACHMENTS)
@requires_key()
def attachments(key: KeyInfo, id: int) -> Response:
    with session_scope() as session:
        if not queries.requests_of(session, key.account_id, [id]):
            return error_json(404, "no such request")
        rows = queries.attachments_of_request(session, key.account_id, id)
    return Response(json.dumps([view.model_dump() for view in attachment_views(rows)]), 200,
                    mimetype="application/json")


@route(bp, DOWNLOAD)
@requires_key()
def download(key: KeyInfo, transid: str, index: int) -> Response:
    with session_scope() as session:
        found = queries.attachment(session, key.account_id, transid, index,
                                   get_settings().mail_attachment_dir)
    if found is None:
        return error_json(404, "no such attachment")
    item, content = found
    # Never shown as a page of ours: a mail's HTML or SVG must not run in the api's origin.
    return Response(content, 200, headers={
        "Content-Type": "application/octet-stream", "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(item.filename)}",
        # Also a type stored before the parser kept only tokens.
        "X-Attachment-Content-Type": media_type(item.content_type),
    })
