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
from sqlalchemy.exc import SQLAlchemyError

from api.auth import requires_key
from api.errors import error_json
from shared import metrics
from shared.db.engine import session_scope
from shared.logs import get_logger
from shared.mail import queries
from shared.mail.rules import BadRecipient
from shared.mail.schemas import MailQueued
from shared.mail.service import MailIntake, TooLarge
from shared.mail.views import attachment_views
from shared.records.keys import KeyInfo
from shared.settings import get_settings

bp = Blueprint("mail", __name__)
log = get_logger(__name__)
CONTENT_TYPE = "message/rfc822"


def _refuse(status: int, message: str, result: str) -> Response:
    metrics.mail_received.labels(result=result).inc()
    return error_json(status, message)


@bp.post("/v1/mail")
@requires_key()
def mail(key: KeyInfo) -> Response:
    intake: MailIntake = current_app.extensions["eventdesk.mail"]
    if request.mimetype != CONTENT_TYPE:
        return _refuse(415, f"send the raw message as {CONTENT_TYPE}", "invalid")
    address = request.args.get("recipient") or request.headers.get("X-4me-Recipient")
    if not address:
        return _refuse(400, "the recipient query parameter or X-4me-Recipient header is "
                            "required", "invalid")
    # A chunked body is cut off at the same limit while it is read (413 from api/errors.py).
    request.max_content_length = intake.max_bytes
    try:
        intake.check_size(request.content_length or 0)
        destination = intake.destination(address, key.account_id)
        transid = intake.accept(request.get_data(), destination, f"http key {key.key_id}",
                                datetime.now(UTC))
    except TooLarge as exc:
        return _refuse(413, str(exc), "too_large")
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


@bp.get("/v1/requests/<int(max=9223372036854775807):request_id>/attachments")
@requires_key()
def attachments(key: KeyInfo, request_id: int) -> Response:
    with session_scope() as session:
        if not queries.requests_of(session, key.account_id, [request_id]):
            return error_json(404, "no such request")
        rows = queries.attachments_of_request(session, key.account_id, request_id)
    return Response(json.dumps([view.model_dump() for view in attachment_views(rows)]), 200,
                    mimetype="application/json")


@bp.get("/v1/mail/<transid>/attachments/<int(max=19):index>")
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
        "X-Attachment-Content-Type": item.content_type,
    })
