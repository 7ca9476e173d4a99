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
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from api.auth import requires_key
from api.errors import error_json
from api.query import argument
from shared.db.engine import session_scope
from shared.records.keys import KeyInfo
from shared.requests.fields import CHOICES, check_text, parse_choice, parse_int, parse_timestamp
from shared.requests.views import (
    Page,
    RequestFilter,
    get_request,
    list_notes,
    list_requests,
    to_json,
)

bp = Blueprint("requests", __name__)

PER_PAGE = 25
MAX_PER_PAGE = 100
MAX_PAGE = 1_000_000
# Ids beyond a BIGINT are no request's: a 404, not a database error.
REQUEST_ID = "<int(max=9223372036854775807):request_id>"


def _json(body: object, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), 200, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def _number(name: str, default: int, highest: int) -> int:
    # per_page as 4me: more than the maximum gives the maximum.
    value = argument(name, lambda raw: min(parse_int(raw, 1), highest)
                      if name == "per_page" else parse_int(raw, 1, highest))
    return default if value is None else value


def _paging() -> tuple[int, int]:
    return _number("page", 1, MAX_PAGE), _number("per_page", PER_PAGE, MAX_PER_PAGE)


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


def _filter() -> RequestFilter:
    return RequestFilter(
        source=argument("source", check_text), source_id=argument("sourceID", check_text),
        status=argument("status", lambda raw: parse_choice(raw, CHOICES["status"])),
        updated_since=argument("updated_since", parse_timestamp))


@bp.get("/v1/requests")
@requires_key("Authentication failed: send Authorization: Bearer <token>")
def requests_list(key: KeyInfo) -> Response:
    where, (number, size) = _filter(), _paging()
    with session_scope() as session:
        views, page = list_requests(session, key.account_id, where, number, size)
    return _json([to_json(view) for view in views], pagination_headers(page))


@bp.get(f"/v1/requests/{REQUEST_ID}")
@requires_key("Authentication failed: send Authorization: Bearer <token>")
def request_one(key: KeyInfo, request_id: int) -> Response:
    with session_scope() as session:
        view = get_request(session, key.account_id, request_id)
    if view is None:
        return error_json(404, "Not found")
    return _json(to_json(view))


@bp.get(f"/v1/requests/{REQUEST_ID}/notes")
@requires_key("Authentication failed: send Authorization: Bearer <token>")
def request_notes(key: KeyInfo, request_id: int) -> Response:
    number, size = _paging()
    with session_scope() as session:
        found = list_notes(session, key.account_id, request_id, number, size)
    if found is None:
        return error_json(404, "Not found")
    views, page = found
    return _json([to_json(view) for view in views], pagination_headers(page))
