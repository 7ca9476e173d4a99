"""Creating requests from 4me event fields.

Names of records (team, ci, requested_for ...) are kept verbatim on the request until name
resolution lands; ids given as ``*_id`` fields are stored when the record exists in the account.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from shared.db.models import Note, Request
from shared.requests.fields import DATETIME_FIELDS, REFERENCE_FIELDS, parse_datetime

DEFAULT_STATUS = "assigned"
_COLUMNS = {
    "subject": "subject", "category": "category", "impact": "impact", "status": "status",
    "completion_reason": "completion_reason", "source": "source", "sourceID": "source_id",
    "supplier_requestID": "supplier_request_id",
}


def create_request(
    session: Session, account_id: str, fields: dict[str, str | None], *, subject_fallback: str,
    transid: str, now: datetime,
) -> Request:
    values: dict[str, object] = {
        column: fields[name] for name, column in _COLUMNS.items() if fields.get(name)
    }
    values.setdefault("subject", subject_fallback)
    values.setdefault("status", DEFAULT_STATUS)
    for name in DATETIME_FIELDS:
        raw = fields.get(name)
        if raw:
            values[name] = parse_datetime(raw)
    request = Request(
        account_id=account_id,
        references={name: fields[name] for name in REFERENCE_FIELDS if fields.get(name)},
        created_at=now, updated_at=now, **values,
    )
    session.add(request)
    session.flush()
    for text, internal in ((fields.get("note"), False), (fields.get("internal_note"), True)):
        if text:
            session.add(Note(request_id=request.id, text=text, internal=internal,
                             transid=transid, created_at=now))
    return request
