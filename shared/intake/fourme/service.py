"""The 4me Events API front door's work, free of Flask (DESIGN 3.2; docs/api.md "4me Events API").

``POST /v1/events``: authenticate the bearer token for the ``X-4me-Account`` account, gather the
parameters (a JSON body, a form body or the query string; body fields win over query fields),
check them as 4me event fields (shared/requests/fields.py), queue them as one event and answer
``202 Accepted``. With ``Prefer: wait=N`` it then waits up to N seconds (at most 30) for the
outcome and answers like 4me: ``201 Created`` with the new request, ``200 OK`` with the matched
one, ``422`` when the event failed, still ``202`` when it is not done in time.

Like the Webex intake (shared/intake/webex/service.py), nothing on the hot path touches the
database: the token is an API key found through the keys' TTL cache (shared/records/keys.py, the
same for every front door), and the event goes to the broker through the same queue and per-key
rate limit (:class:`~shared.messaging.queueing.EventQueue`). Only ``Prefer: wait`` reads the
database, after the event is queued.

Decisions where the seed is silent:
- a parameter that is not a 4me event field is a 422 naming it (a typo such as ``sourceId``
  would otherwise silently lose a value);
- JSON numbers and booleans become text (``"template_id": 1234`` is ``"1234"``), null or ``""``
  mean "not given" (so the default applies), arrays and objects are a 422;
- a form body (``application/x-www-form-urlencoded``) that is one JSON object is read as JSON:
  ``curl -d '{...}'`` sends exactly that; a body without a content type is read the same way;
- a name given twice in a form body or query string: the last value counts (as in Rails);
- other content types are a 415.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import pydantic_core

from shared.db.lookup import LookupUnavailable
from shared.ids import make_transid
from shared.intake.fourme.schemas import FourMeError, FourMeFieldError, FourMeQueued
from shared.intake.waiters import WaitSlots
from shared.messaging.publish import PublishError
from shared.messaging.queueing import EventQueue
from shared.records.keys import KeyInfo, Keys
from shared.requests.fields import FIELDS, FieldErrors, check_fields, check_text, number_text
from shared.transactions.schemas import EventBatch, QueuedEvent, TransactionView

MAX_WAIT_SECONDS = 30
POLL_SECONDS = 0.05
FORM = "application/x-www-form-urlencoded"
DONE = frozenset({"completed", "failed", "expired"})


@dataclass
class Reply:
    """An answer: HTTP status, JSON body, headers, and the transid when an event was queued."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    transid: str | None = None


class Refused(Exception):
    def __init__(self, status: int, message: str, errors: list[tuple[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        body = FourMeError(message=message, errors=None if errors is None else [
            FourMeFieldError(field=name, message=text) for name, text in errors])
        self.reply = Reply(status, body.model_dump(exclude_none=True), headers or {})


def _unauthenticated(message: str) -> Refused:
    return Refused(401, message, headers={"WWW-Authenticate": 'Bearer realm="eventdesk"'})


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def check_account(caller: KeyInfo, account: str | None, *, required: bool) -> None:
    """The ``X-4me-Account`` header must name the token's account (when given, or required)."""
    account = (account or "").strip()
    if not account:
        if required:
            raise _unauthenticated("X-4me-Account header required")
        return
    if account != caller.account_id:
        raise _unauthenticated("The token is not valid for this account")


def parse_wait(prefer: str | None) -> int | None:
    """The ``wait`` preference of a ``Prefer`` header (RFC 7240), capped at 30 s; else None."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() == "wait":
            value = value.strip().strip('"')
            if value.isascii() and value.isdigit():
                return MAX_WAIT_SECONDS if len(value) > 3 else min(int(value), MAX_WAIT_SECONDS)
    return None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = pydantic_core.from_json(body, allow_inf_nan=False)  # NaN and Infinity: no JSON
    except ValueError as exc:
        # The parser's own words are no part of the answer (docs/api.md "4me Events API").
        raise Refused(400, "Invalid JSON: the body is not well-formed JSON") from exc
    if not isinstance(data, dict):
        raise Refused(400, "The JSON body must be an object of parameters")
    return data


def _form(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode()
        pairs: list[tuple[str, str]] = []
        for piece in text.split("&"):
            if not piece:
                continue
            name, equals, value = piece.partition("=")
            if not equals:
                raise ValueError
            pairs.append((unquote_plus(name, errors="strict"),
                          unquote_plus(value, errors="strict")))
    except ValueError as exc:  # UnicodeDecodeError too
        raise Refused(400, "Invalid form body: expected name=value pairs, percent-encoded "
                           "UTF-8") from exc
    return dict(pairs)


def load_body(content_type: str, body: bytes) -> dict[str, Any]:
    """The body's parameters: JSON, form encoding, or a JSON object sent as a form (curl -d)."""
    if not body.strip():
        return {}
    if content_type == "application/json" or content_type.endswith("+json"):
        return _json_object(body)
    if content_type in (FORM, ""):
        return _json_object(body) if body.lstrip().startswith(b"{") else _form(body)
    raise Refused(415, f"Unsupported Content-Type {content_type[:100]!r}: send "
                       f"application/json or {FORM}")


def _text(value: Any) -> str | None:
    """A parameter as text; raises TypeError (not text), ValueError (text check_text refuses)."""
    if value is None:
        return None
    if isinstance(value, str):
        return check_text(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number_text(value)
    raise TypeError


def _given(values: dict[str, str | None], name: str) -> bool:
    value = values.get(name)
    return bool(value and value.strip())


def event_parameters(
    query: Iterable[tuple[str, str]], body: dict[str, Any]
) -> dict[str, str | None]:
    """Query and body parameters (the body wins), checked; raises Refused (422) naming faults."""
    given: dict[str, Any] = dict(query)
    given.update(body)
    errors: list[tuple[str, str]] = []
    values: dict[str, str | None] = {}
    for name, value in given.items():
        if name not in FIELDS:
            errors.append((name, "is not a 4me event field"))
            continue
        try:
            values[name] = _text(value)
        except TypeError:
            errors.append((name, "must be text, a number or null"))
        except ValueError as exc:
            errors.append((name, str(exc)))
    try:
        clean = check_fields(values)
    except FieldErrors as exc:
        errors.extend(exc.errors)
        clean = values
    if not _given(clean, "subject") and not _given(clean, "template_id") \
            and all(name != "subject" for name, _ in errors):
        errors.append(("subject", "is required unless template_id is given"))
    if errors:
        raise Refused(422, "Validation failed", errors)
    return clean


class FourMeIntake:
    def __init__(
        self,
        *,
        queue: EventQueue,
        keys: Keys,
        secret: bytes,
        find_transaction: Callable[[str, str], TransactionView | None],
        find_request: Callable[[str, int], dict[str, Any] | None],
        waiters: WaitSlots,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``keys``: the process's key cache; ``find_*`` read the database;
        ``waiters``: the process's slots for ``Prefer: wait`` (shared/intake/waiters.py)."""
        self._events = queue
        self._keys = keys
        self._secret = secret
        self._find_transaction = find_transaction
        self._find_request = find_request
        self._waiters = waiters
        self._sleep = sleep
        self._clock = clock

    def authenticate(self, authorization: str | None, account: str | None, *,
                     account_required: bool = True) -> KeyInfo:
        """The caller of ``Authorization: Bearer <token>`` for ``account``; raises Refused."""
        token = bearer_token(authorization)
        if token is None:
            raise _unauthenticated("Authorization header with a Bearer token required")
        try:
            caller = self._keys.authenticate(token)
        except LookupUnavailable as exc:
            raise Refused(503, "Service unavailable, try again later") from exc
        if caller is None:
            raise _unauthenticated("Invalid token")
        check_account(caller, account, required=account_required)
        return caller

    def handle(
        self, *, authorization: str | None, account: str | None, content_type: str,
        read_body: Callable[[], bytes], query: Iterable[tuple[str, str]], prefer: str | None,
    ) -> Reply:
        """``POST /v1/events``. The body is read only once the caller is known."""
        try:
            caller = self.authenticate(authorization, account)
            parameters = event_parameters(query, load_body(content_type, read_body()))
            reply = self._queue(caller, parameters)
        except Refused as refused:
            return refused.reply
        wait = parse_wait(prefer)
        if wait is None:
            return reply
        with self._waiters.slot() as granted:
            if not granted:
                # No Preference-Applied: the caller can tell that it was not waited for.
                return reply
            reply = self._outcome(caller, reply, wait)
        reply.headers["Preference-Applied"] = f"wait={wait}"
        return reply

    def _queue(self, caller: KeyInfo, parameters: dict[str, str | None]) -> Reply:
        transid = make_transid(self._secret, caller.account_id)
        # model_construct: the values are checked already; validating again costs per event.
        batch = EventBatch.model_construct(
            channel="4me", account_id=caller.account_id, key_id=caller.key_id,
            received_at=datetime.now(UTC),
            events=[QueuedEvent.model_construct(transid=transid, parameters=parameters)],
        )
        try:
            limited = self._events.publish(batch)
        except PublishError as exc:
            raise Refused(503, "Service unavailable: the event was not queued") from exc
        if limited is not None:
            wait = limited.header
            raise Refused(429, f"Too many requests: retry after {wait} s",
                          headers={"Retry-After": wait})
        return Reply(202, FourMeQueued(transid=transid).model_dump(),
                     {"Location": f"/v1/transactions/{transid}", "X-Transid": transid}, transid)

    def _wait(self, account_id: str, transid: str, seconds: float) -> TransactionView | None:
        """Poll the transaction until it is done or ``seconds`` have passed."""
        deadline = self._clock() + seconds
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            self._sleep(min(POLL_SECONDS, remaining))
            try:
                view = self._find_transaction(account_id, transid)
            except LookupUnavailable:
                return None  # queued all the same: the caller can poll the Location
            if view is not None and view.status in DONE:
                return view

    def _outcome(self, caller: KeyInfo, queued: Reply, seconds: int) -> Reply:
        transid = queued.transid
        assert transid is not None
        view = self._wait(caller.account_id, transid, seconds)
        if view is None:
            return queued
        headers = {"X-Transid": transid}
        if view.status != "completed" or view.outcome is None or view.outcome.request_id is None:
            # The reason stays on the transaction: for a fault of ours it is an exception's
            # text, which a 4me error never echoes.
            message = f"The event ended {view.status}: see /v1/transactions/{transid}"
            return Reply(422, FourMeError(message=message).model_dump(exclude_none=True),
                         headers, transid)
        request_id = view.outcome.request_id
        try:
            body = self._find_request(caller.account_id, request_id)
        except LookupUnavailable:
            body = None
        if body is None:
            return queued
        if view.outcome.action == "created":
            return Reply(201, body, {**headers, "Location": f"/v1/requests/{request_id}"}, transid)
        return Reply(200, body, headers, transid)
