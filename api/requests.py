"""The read API of 4me-shaped requests (DESIGN 3.4; shapes: shared/requests/views.py).

``GET /v1/requests/<id>``, ``GET /v1/requests?source=&sourceID=&status=&updated_since=`` and
``GET /v1/requests/<id>/notes``, for the caller's account only (any other id is a 404).
Auth: ``Authorization: Bearer <token>`` or the Webex ``key`` header; ``X-4me-Account`` is
optional, and when given must be the token's account. Lists are paginated like 4me's:
``page`` (from 1), ``per_page`` (default 25, at most 100), a ``Link`` header (first, prev,
next, last) and the ``X-Pagination-*`` headers.
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import urlencode

from flask import Blueprint, Response, request
from pydantic import BaseModel, Field

from api.auth import requires_key
from api.errors import error_json
from api.operations import KEY_OR_BEARER, Answer, Header, Operation, route
from api.query import Choice, Query, Since, Text, Whole
from shared.db.engine import session_scope
from shared.intake.fourme.schemas import FourMeError
from shared.records.keys import KeyInfo
from shared.requests.fields import CHOICES, MAX_ID
from shared.requests.views import (
    NoteView,
    Page,
    RequestFilter,
    RequestView,
    get_request,
    list_notes,
    list_requests,
    to_json,
)

bp = Blueprint("requests", __name__)

PER_PAGE = 25
MAX_PER_PAGE = 100
MAX_PAGE = 1_000_000
REFUSAL = "Authentication failed: send Authorization: Bearer <token>"


class PageQuery(Query):
    page: Annotated[int, Whole(1, MAX_PAGE)] = Field(default=1, description="From 1.")
    per_page: Annotated[int, Whole(1, cap=MAX_PER_PAGE)] = Field(
        default=PER_PAGE, description=f"At most {MAX_PER_PAGE}: a larger number reads as "
        f"{MAX_PER_PAGE}, as on 4me (X-Pagination-Per-Page says the size used).")


class RequestQuery(PageQuery):
    source: Text | None = None
    sourceID: Text | None = None  # noqa: N815 (4me's name)
    status: Annotated[str, Choice(CHOICES["status"])] | None = None
    updated_since: Since | None = Field(default=None, description=(
        "Requests updated at or after this time; one before 0001-01-02 or after 9999-12-30 "
        "reads as that day."))


class RequestId(BaseModel):
    # Ids beyond a BIGINT are no request's: a 404, not a database error.
    id: int = Field(ge=0, le=MAX_ID)


ACCOUNT = Header("X-4me-Account", "The account id; when given, the token's account.")
ERROR = Answer("`message`; a 400 names the parameter at fault", FourMeError)
MISSING = Answer("No such request in the caller's account", FourMeError)
PAGINATED = {
    "Link": "first, prev, next and last pages",
    **{f"X-Pagination-{name}": name.replace("-", " ").lower()
       for name in ("Per-Page", "Current-Page", "Total-Pages", "Total-Entries")},
}
UNAVAILABLE = Answer("The database is unreachable", FourMeError)
LIST = Operation(
    "GET", "/v1/requests", "The account's requests, oldest first", security=KEY_OR_BEARER,
    query=RequestQuery, headers=(ACCOUNT,),
    responses={200: Answer("A page", list[RequestView], headers=PAGINATED), 400: ERROR,
               401: ERROR, 503: UNAVAILABLE})
ONE = Operation(
    "GET", "/v1/requests/{id}", "One request", security=KEY_OR_BEARER, params=RequestId,
    headers=(ACCOUNT,),
    responses={200: Answer("The request", RequestView), 401: ERROR, 404: MISSING,
               503: UNAVAILABLE})
NOTES = Operation(
    "GET", "/v1/requests/{id}/notes", "The request's notes, oldest first",
    security=KEY_OR_BEARER, params=RequestId, query=PageQuery, headers=(ACCOUNT,),
    responses={200: Answer("A page", list[NoteView], headers=PAGINATED), 400: ERROR,
               401: ERROR, 404: MISSING, 503: UNAVAILABLE})


def _json(body: object, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), 200, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def _page_url(number: int, size: int) -> str:
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page", "per_page")]
    return f"{request.base_url}?{urlencode([*args, ('page', number), ('per_page', size)])}"


def pagination_headers(page: Page) -> dict[str, str]:
    links = [(1, "first")]
    if page.number > 1:
        links.append((min(page.number - 1, max(page.pages, 1)), "prev"))
    if page.number < page.pages:
        links.append((page.number + 1, "next"))
    links.append((max(page.pages, 1), "last"))
    return {
        "Link": ", ".join(f'<{_page_url(n, page.size)}>; rel="{rel}"' for n, rel in links),
        "X-Pagination-Per-Page": str(page.size),
        "X-Pagination-Current-Page": str(page.number),
        "X-Pagination-Total-Pages": str(page.pages),
        "X-Pagination-Total-Entries": str(page.total),
    }


@route(bp, LIST)
@requires_key(REFUSAL)
def requests_list(key: KeyInfo) -> Response:
    query = LIST.args()
    where = RequestFilter(source=query.source, source_id=query.sourceID, status=query.status,
                          updated_since=query.updated_since)
    with session_scope() as session:
        views, page = list_requests(session, key.account_id, where, query.page, query.per_page)
    return _json([to_json(view) for view in views], pagination_headers(page))


@route(bp, ONE)
@requires_key(REFUSAL)
def request_one(key: KeyInfo, id: int) -> Response:
    with session_scope() as session:
        view = get_request(session, key.account_id, id)
    if view is None:
        return error_json(404, "Not found")
    return _json(to_json(view))


@route(bp, NOTES)
@requires_key(REFUSAL)
def request_notes(key: KeyInfo, id: int) -> Response:
    query = NOTES.args()
    with session_scope() as session:
        found = list_notes(session, key.account_id, id, query.page, query.per_page)
    if found is None:
        return error_json(404, "Not found")
    views, page = found
    return _json([to_json(view) for view in views], pagination_headers(page))
