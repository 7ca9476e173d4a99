"""The 4me Events API (``POST /v1/events``) and the read API of requests, as a caller sees them.

The front door publishes to a real Redis and its messages are read back off the ``events`` list
(no worker); the end-to-end tests run the seed's curl examples through a real worker on
RabbitMQ and PostgreSQL, with ``Prefer: wait`` to get the request back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from werkzeug.test import TestResponse

from api import create_app
from shared.db.engine import session_scope
from shared.db.lookup import LookupUnavailable
from shared.db.models import Note, Request
from shared.intake.fourme.schemas import FourMeEventParameters
from shared.intake.fourme.service import FourMeIntake, parse_wait
from shared.intake.waiters import WaitSlots
from shared.messaging.publish import Limited, TaskMessage
from shared.messaging.queueing import EventQueue
from shared.records.keys import KeyInfo, Keys
from shared.requests.fields import FIELDS, FieldErrors, check_fields
from shared.transactions.schemas import Outcome, TransactionView
from tests.conftest import _vhost, queued_messages
from tests.test_webex_api import JSON_VALUES
from tests.test_worker import Stack

PATH = "/v1/events"
AUTH = {"Authorization": "Bearer demo-key", "X-4me-Account": "wdc"}
FORM = "application/x-www-form-urlencoded"
EVENT = {"source": "nagios", "sourceID": "42", "subject": "Server Down", "ci": "ABC1234"}


def post(client: FlaskClient, headers: dict[str, str] | None = None, **kwargs: Any
         ) -> TestResponse:
    response = client.post(PATH, headers=AUTH if headers is None else headers, **kwargs)
    assert response.is_json, response.data
    return response


def queued_parameters(broker: str) -> list[dict[str, Any]]:
    return [event["parameters"] for batch in queued_messages(broker) for event in batch["events"]]


# -- accepted ------------------------------------------------------------------------------------

@pytest.mark.redis
@pytest.mark.parametrize("how", [
    {"json": EVENT},
    {"data": EVENT},  # form encoding
    {"query_string": EVENT},
    # curl -d '{...}' without a content type sends the JSON as a form body: read as JSON.
    {"data": json.dumps(EVENT), "content_type": FORM},
], ids=["json", "form", "query", "json-as-form"])
def test_json_form_and_query_string_are_each_accepted(
    client: FlaskClient, broker: str, how: dict[str, Any]
) -> None:
    response = post(client, **how)
    assert response.status_code == 202
    body = response.get_json()
    assert body == {"transid": body["transid"], "status": "queued"}
    assert response.headers["Location"] == f"/v1/transactions/{body['transid']}"
    (batch,) = queued_messages(broker)
    assert (batch["channel"], batch["account_id"], batch["key_id"]) == ("4me", "wdc", 1)
    (event,) = batch["events"]
    assert event["transid"] == body["transid"]
    assert event["parameters"] == EVENT


@pytest.mark.redis
def test_body_fields_win_over_query_fields(client: FlaskClient, broker: str) -> None:
    response = post(client, query_string={"subject": "from query", "note": "n"},
                    json={"subject": "from body"})
    assert response.status_code == 202
    assert queued_parameters(broker) == [{"subject": "from body", "note": "n"}]


@pytest.mark.redis
def test_values_become_text_and_blank_means_not_given(client: FlaskClient, broker: str) -> None:
    response = post(client, json={"template_id": 1234, "requested_for": "", "team": None,
                                  "subject": "  padded  "})
    assert response.status_code == 202
    assert queued_parameters(broker) == [
        {"template_id": "1234", "requested_for": None, "team": None, "subject": "padded"}]


@pytest.mark.redis
def test_account_header_and_scheme_are_case_insensitive_names(client: FlaskClient) -> None:
    headers = {"authorization": "bearer demo-key", "x-4me-account": "wdc"}
    assert post(client, headers, json=EVENT).status_code == 202


# -- refused -------------------------------------------------------------------------------------

ERRORS = [
    # (name, headers, request kwargs, status, message, field errors)
    ("malformed JSON", AUTH, {"data": b'{"subject": ', "content_type": "application/json"},
     400, "Invalid JSON", None),
    ("JSON not an object", AUTH, {"json": ["subject", "x"]}, 400,
     "The JSON body must be an object of parameters", None),
    ("malformed JSON as form", AUTH, {"data": b'{"subject": "x"', "content_type": FORM},
     400, "Invalid JSON", None),
    ("NaN is no JSON", AUTH, {"data": b'{"subject": NaN}', "content_type": "application/json"},
     400, "Invalid JSON", None),
    ("a number past a double", AUTH,
     {"data": b'{"subject": "x", "note": 1e400}', "content_type": "application/json"}, 422,
     "Validation failed", [{"field": "note", "message": "is a number too large to be read"}]),
    ("form field without =", AUTH, {"data": b"subject", "content_type": FORM}, 400,
     "Invalid form body", None),
    ("form not UTF-8", AUTH, {"data": b"subject=%ff%fe", "content_type": FORM}, 400,
     "Invalid form body", None),
    ("no token", {"X-4me-Account": "wdc"}, {"json": EVENT}, 401,
     "Authorization header with a Bearer token required", None),
    ("not a bearer token", {"Authorization": "Basic ZGVtby1rZXk=", "X-4me-Account": "wdc"},
     {"json": EVENT}, 401, "Authorization header with a Bearer token required", None),
    ("wrong token", {**AUTH, "Authorization": "Bearer not-a-key"}, {"json": EVENT}, 401,
     "Invalid token", None),
    ("wrong account", {**AUTH, "X-4me-Account": "widget"}, {"json": EVENT}, 401,
     "The token is not valid for this account", None),
    ("no account", {"Authorization": "Bearer demo-key"}, {"json": EVENT}, 401,
     "X-4me-Account header required", None),
    ("Webex key header", {"key": "demo-key", "X-4me-Account": "wdc"}, {"json": EVENT}, 401,
     "Authorization header with a Bearer token required", None),
    ("unsupported content type", AUTH, {"data": b"<subject/>", "content_type": "text/xml"}, 415,
     "Unsupported Content-Type", None),
    ("field message", AUTH, {"json": {**EVENT, "category": "x", "impact": "huge"}}, 422,
     "Validation failed",
     [{"field": "category", "message": "must be one of incident, rfc, rfi, complaint, "
       "compliment, other, order, fulfillment, reservation"},
      {"field": "impact", "message": "must be one of low, medium, high, top"}]),
    ("unknown field", AUTH, {"data": json.dumps({**EVENT, "sourceId": "42", "evtid": "x"}),
                             "content_type": "application/json"}, 422,
     "Validation failed", [{"field": "sourceId", "message": "is not a 4me event field"},
                           {"field": "evtid", "message": "is not a 4me event field"}]),
    ("unknown query field", AUTH, {"query_string": {"subject": "s", "foo": "1"}}, 422,
     "Validation failed", [{"field": "foo", "message": "is not a 4me event field"}]),
    ("missing subject", AUTH, {"json": {"source": "nagios", "ci": "ABC1234"}}, 422,
     "Validation failed",
     [{"field": "subject", "message": "is required unless template_id is given"}]),
    ("empty body", AUTH, {}, 422, "Validation failed",
     [{"field": "subject", "message": "is required unless template_id is given"}]),
    ("nested value", AUTH, {"json": {**EVENT, "ci": ["ABC1234"]}}, 422, "Validation failed",
     [{"field": "ci", "message": "must be text, a number or null"}]),
    ("long subject, bad date, bad id", AUTH,
     {"data": {"subject": "x" * 256, "waiting_until": "tomorrow", "template_id": "12a"}},
     422, "Validation failed",
     [{"field": "subject", "message": "is longer than 255"},
      {"field": "waiting_until", "message": "expected yyyy-mm-ddThh:mm[:ss][Z]"},
      {"field": "template_id",
       "message": "must be a numeric id (ASCII digits, at most 9223372036854775807)"}]),
]


@pytest.mark.redis
@pytest.mark.parametrize(("name", "headers", "how", "status", "message", "errors"), ERRORS,
                         ids=[case[0] for case in ERRORS])
def test_errors(
    client: FlaskClient, broker: str, name: str, headers: dict[str, str], how: dict[str, Any],
    status: int, message: str, errors: list[dict[str, str]] | None,
) -> None:
    response = post(client, headers, **how)
    body = response.get_json()
    assert response.status_code == status, body
    assert body["message"].startswith(message)
    assert body.get("errors") == errors
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert queued_messages(broker) == []


@pytest.mark.redis
def test_body_over_the_limit_is_413_in_the_4me_shape(
    make_client: Callable[..., FlaskClient], broker: str
) -> None:
    client = make_client(max_body_bytes=2048)
    response = post(client, json={**EVENT, "note": "x" * 4000})
    assert response.status_code == 413
    assert response.get_json() == {"message": "the body is larger than 2048 bytes"}
    assert queued_messages(broker) == []


@pytest.mark.redis
def test_rate_limit_is_429_with_retry_after_on_the_webex_bucket(
    make_client: Callable[..., FlaskClient], broker: str
) -> None:
    client = make_client(rate_limit_per_second=0.5, rate_limit_burst=2)
    webex = client.post("/resources/v1/events/externalevent/", headers={"key": "demo-key"},
                        json={"events": [{"evtid": "server-down", "parameters": {"host": "h"}}]})
    assert webex.status_code == 200
    assert post(client, json=EVENT).status_code == 202  # the bucket's last token
    response = post(client, json=EVENT)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.get_json()["message"].startswith("Too many requests")
    assert len(queued_messages(broker)) == 2


@pytest.mark.redis
def test_broker_down_is_503_and_nothing_queued(make_client: Callable[..., FlaskClient]) -> None:
    client = make_client(broker_url="redis://127.0.0.1:1/0")
    response = post(client, json=EVENT)
    assert response.status_code == 503
    assert "transid" not in response.get_json()


@pytest.mark.redis
def test_prefer_wait_answers_202_when_not_done_in_time(client: FlaskClient) -> None:
    # No worker on this broker: the event stays queued.
    started = time.monotonic()
    response = post(client, {**AUTH, "Prefer": "respond-async, wait=1"}, json=EVENT)
    assert time.monotonic() - started >= 1
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=1"
    assert response.get_json()["status"] == "queued"


@pytest.mark.parametrize(("header", "wait"), [
    (None, None), ("", None), ("respond-async", None), ("wait=10", 10), ("WAIT = 3", 3),
    ('wait="5"', 5), ("respond-async, wait=0", 0), ("wait=31", 30), ("wait=" + "9" * 5000, 30),
    ("wait=-1", None), ("wait=1.5", None), ("wait=abc", None), ("wait=2; x=y, wait=7", 2),
])
def test_parse_wait(header: str | None, wait: int | None) -> None:
    assert parse_wait(header) == wait


# -- Prefer: wait, with the database stood in for ------------------------------------------------

class Publisher:
    def __init__(self) -> None:
        self.messages: list[tuple[TaskMessage, Mapping[str, int]]] = []

    def publish(self, message: TaskMessage, costs: Mapping[str, int]) -> Limited | None:
        self.messages.append((message, costs))
        return None

    def ping(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def waiting_intake(find_transaction: Callable[[str, str], TransactionView | None],
                   waiters: WaitSlots | None = None) -> tuple[FourMeIntake, Clock]:
    clock = Clock()
    caller = KeyInfo(key_id=1, account_id="wdc", person_id=301)
    intake = FourMeIntake(
        queue=EventQueue(Publisher()), keys=Keys(lambda _: caller, ttl=60), secret=b"s",
        find_transaction=find_transaction,
        find_request=lambda _, request_id: {"id": request_id, "subject": "s"},
        waiters=waiters or WaitSlots(4), sleep=clock.sleep, clock=clock,
    )
    return intake, clock


def send_waiting(intake: FourMeIntake, wait: int) -> Any:
    return intake.handle(
        authorization="Bearer t", account="wdc", content_type="application/json",
        read_body=lambda: b'{"subject": "s"}', query=[], prefer=f"wait={wait}",
    )


@pytest.mark.parametrize(("view", "status", "location"), [
    (TransactionView(transid="t", status="completed",
                     outcome=Outcome(action="created", request_id=7)), 201, "/v1/requests/7"),
    (TransactionView(transid="t", status="completed",
                     outcome=Outcome(action="unchanged", request_id=7)), 200, None),
    (TransactionView(transid="t", status="completed",
                     outcome=Outcome(action="updated", request_id=7)), 200, None),
])
def test_prefer_wait_answers_the_request(
    view: TransactionView, status: int, location: str | None
) -> None:
    polls: list[float] = []

    def find(account_id: str, transid: str) -> TransactionView | None:
        polls.append(clock.now)
        return None if len(polls) < 3 else view

    intake, clock = waiting_intake(find)
    reply = send_waiting(intake, 10)
    assert (reply.status, reply.body) == (status, {"id": 7, "subject": "s"})
    assert reply.headers.get("Location") == location
    assert reply.headers["Preference-Applied"] == "wait=10"
    assert polls == pytest.approx([0.05, 0.10, 0.15])


def test_prefer_wait_answers_422_when_the_event_failed() -> None:
    # The reason stays on the transaction: for a fault of ours it is Python exception text.
    failed = TransactionView(transid="t", status="failed", error="ValueError: invalid literal")
    intake, _ = waiting_intake(lambda *_: failed)
    reply = send_waiting(intake, 5)
    assert reply.status == 422
    location = f"/v1/transactions/{reply.transid}"
    assert reply.body == {"message": f"The event ended failed: see {location}"}


def test_prefer_wait_beyond_the_process_slots_answers_202_at_once() -> None:
    slots = WaitSlots(1)
    intake, clock = waiting_intake(lambda *_: None, slots)
    with slots.slot() as granted:
        assert granted
        reply = send_waiting(intake, 10)
    assert reply.status == 202
    assert "Preference-Applied" not in reply.headers
    assert clock.now == 0
    # The slot is free again: the next caller waits.
    assert send_waiting(intake, 1).headers["Preference-Applied"] == "wait=1"
    assert slots.taken == 0


def test_prefer_wait_gives_up_after_n_seconds_or_when_the_database_is_down() -> None:
    intake, clock = waiting_intake(lambda *_: None)
    reply = send_waiting(intake, 2)
    assert (reply.status, reply.headers["Preference-Applied"]) == (202, "wait=2")
    assert clock.now == pytest.approx(2.0)

    def down(account_id: str, transid: str) -> TransactionView | None:
        raise LookupUnavailable("connection refused")

    intake, clock = waiting_intake(down)
    assert send_waiting(intake, 30).status == 202
    assert clock.now == pytest.approx(0.05)


# -- the parameters model of the OpenAPI document agrees with check_fields -----------------------

SAMPLES = ["", "x", "x" * 31, "x" * 256, "12", "1" * 19, "rfi", "incident", "high",
           "completed", "solved", "2026-01-05T23:00", "2026-01-05T23:00:00Z", "2026-01-05"]


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_parameters_model_agrees_with_check_fields(name: str) -> None:
    assert set(FourMeEventParameters.model_json_schema()["properties"]) == FIELDS
    for value in SAMPLES:
        try:
            check_fields({name: value})
            checked = True
        except FieldErrors:
            checked = False
        try:
            FourMeEventParameters.model_validate({name: value or None})
            modelled = True
        except ValidationError:
            modelled = False
        assert checked == modelled, (name, value)


@pytest.mark.redis
def test_openapi_documents_the_4me_paths(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert {"/v1/events", "/v1/requests", "/v1/requests/{id}", "/v1/requests/{id}/notes"} \
        <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert {"FourMeEventParameters", "FourMeError", "FourMeQueued", "RequestView",
            "NoteView"} <= set(schemas)
    assert "sourceID" in schemas["RequestView"]["properties"]


# -- fuzz ----------------------------------------------------------------------------------------

FIELD_VALUES = st.one_of(JSON_VALUES, st.text(max_size=40))
BODIES = st.one_of(
    JSON_VALUES,
    st.dictionaries(st.sampled_from(sorted(FIELDS)), FIELD_VALUES, max_size=6),
    st.dictionaries(st.sampled_from(sorted(FIELDS)) | st.text(max_size=12), FIELD_VALUES,
                    max_size=6),
)


@pytest.mark.redis
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, as_form=st.booleans())
def test_no_json_body_gets_a_500(client: FlaskClient, body: Any, as_form: bool) -> None:
    response = post(client, data=json.dumps(body),
                    content_type=FORM if as_form else "application/json")
    assert response.status_code in (202, 400, 422), response.get_json()


@pytest.mark.redis
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200), query=st.dictionaries(st.text(max_size=8),
                                                           st.text(max_size=8), max_size=3))
def test_no_form_body_gets_a_500(client: FlaskClient, body: bytes, query: dict[str, str]) -> None:
    response = post(client, data=body, content_type=FORM, query_string=query)
    assert response.status_code in (202, 400, 422), response.get_json()


# -- the read API, on records written straight into the database ---------------------------------

NOW = datetime(2026, 11, 23, 9, 37, 3, 123456, tzinfo=UTC)


def add_request(database: str, **values: Any) -> int:
    with session_scope(database) as session:
        row = Request(**{"account_id": "wdc", "status": "assigned", "created_at": NOW,
                         "updated_at": NOW, **values})
        session.add(row)
        session.flush()
        return row.id


def get(client: FlaskClient, path: str, headers: dict[str, str] | None = None,
        **query: Any) -> TestResponse:
    response = client.get(path, headers=AUTH if headers is None else headers, query_string=query)
    assert response.is_json, response.data
    return response


@pytest.mark.redis
def test_request_is_4me_shaped(client: FlaskClient, sqlite_url: str) -> None:
    request_id = add_request(
        sqlite_url, subject="Server Down", category="incident", impact="top", source="nagios",
        source_id="42", supplier_request_id="", team_id=101, member_id=303,
        requested_by_id=301, requested_for_id=302, created_by_id=301, service_instance_id=402,
        ci_id=502, template_id=1234, supplier_id=201, problem_id=501, workflow_id=601,
        waiting_until=datetime(2026, 12, 1, 8, 0, tzinfo=UTC),
    )
    response = get(client, f"/v1/requests/{request_id}")
    assert response.status_code == 200
    assert response.get_json() == {
        "id": request_id, "subject": "Server Down", "category": "incident", "impact": "top",
        "status": "assigned", "completion_reason": None, "source": "nagios", "sourceID": "42",
        "supplier_requestID": None,
        "team": {"id": 101, "name": "Service Desk"},
        "member": {"id": 303, "name": "Nick Wheeler"},
        "requested_by": {"id": 301, "name": "Howard Tanner"},
        "requested_for": {"id": 302, "name": "Ellen Brown"},
        "created_by": {"id": 301, "name": "Howard Tanner"},
        "service_instance": {"id": 402, "name": "Expense Reporting Production"},
        "supplier": {"id": 201, "name": "Widget Data Center"},
        "template": {"id": 1234, "subject": "Move Widget Data Center desktop PC"},
        "ci": {"id": 502, "label": "ABC1234", "name": "Expense Reporting Production Database"},
        "problem": {"id": 501}, "workflow": {"id": 601},
        "created_at": "2026-11-23T09:37:03Z", "updated_at": "2026-11-23T09:37:03Z",
        "desired_completion_at": None, "downtime_start_at": None, "downtime_end_at": None,
        "waiting_until": "2026-12-01T08:00:00Z", "custom_fields": None,
    }
    # The Webex key header works too, and X-4me-Account is optional here.
    assert get(client, f"/v1/requests/{request_id}", {"key": "demo-key"}).status_code == 200


@pytest.mark.redis
def test_list_filters_and_paginates_like_4me(client: FlaskClient, sqlite_url: str) -> None:
    source = f"list-{uuid.uuid4().hex[:8]}"
    ids = [add_request(sqlite_url, subject=f"s{i}", source=source, source_id=str(i % 2),
                       updated_at=NOW + timedelta(hours=i)) for i in range(5)]
    add_request(sqlite_url, subject="closed", source=source, status="completed")
    response = get(client, "/v1/requests", source=source, status="assigned", per_page=2, page=2)
    assert response.status_code == 200
    assert [item["id"] for item in response.get_json()] == ids[2:4]
    headers = response.headers
    assert (headers["X-Pagination-Per-Page"], headers["X-Pagination-Current-Page"],
            headers["X-Pagination-Total-Pages"], headers["X-Pagination-Total-Entries"]) == (
        "2", "2", "3", "5")
    links = {rel: url for url, rel in (part.split("; ") for part in headers["Link"].split(", "))}
    base = f"<http://localhost/v1/requests?source={source}&status=assigned"
    assert links == {
        'rel="first"': f"{base}&page=1&per_page=2>", 'rel="prev"': f"{base}&page=1&per_page=2>",
        'rel="next"': f"{base}&page=3&per_page=2>", 'rel="last"': f"{base}&page=3&per_page=2>",
    }
    found = get(client, "/v1/requests", source=source, sourceID="1").get_json()
    assert [item["id"] for item in found] == [ids[1], ids[3]]
    since = get(client, "/v1/requests", source=source,
                updated_since="2026-11-23T12:00:00Z").get_json()
    assert [item["id"] for item in since] == ids[3:]
    capped = get(client, "/v1/requests", source=source, per_page=1000)
    assert capped.headers["X-Pagination-Per-Page"] == "100"


@pytest.mark.redis
def test_notes_are_listed_oldest_first(client: FlaskClient, sqlite_url: str) -> None:
    request_id = add_request(sqlite_url, subject="with notes")
    with session_scope(sqlite_url) as session:
        session.add_all([
            Note(request_id=request_id, text="first", text_hash="a", internal=False,
                 created_at=NOW),
            Note(request_id=request_id, text="second", text_hash="b", internal=True,
                 created_at=NOW + timedelta(seconds=1)),
        ])
    response = get(client, f"/v1/requests/{request_id}/notes")
    assert response.status_code == 200
    notes = response.get_json()
    assert [(n["text"], n["internal"], n["person"], n["created_at"]) for n in notes] == [
        ("first", False, None, "2026-11-23T09:37:03Z"),
        ("second", True, None, "2026-11-23T09:37:04Z"),
    ]
    assert response.headers["X-Pagination-Total-Entries"] == "2"


@pytest.mark.redis
def test_read_errors(client: FlaskClient, sqlite_url: str) -> None:
    other = add_request(sqlite_url, subject="someone else's", account_id="widget")
    mine = add_request(sqlite_url, subject="mine")
    for path in (f"/v1/requests/{other}", f"/v1/requests/{other}/notes",
                 "/v1/requests/99999999"):
        response = get(client, path)
        assert (response.status_code, response.get_json()) == (404, {"message": "Not found"})
    assert get(client, "/v1/requests/99999999999999999999999").status_code == 404
    assert get(client, f"/v1/requests/{mine}", {}).status_code == 401
    assert get(client, f"/v1/requests/{mine}", {"Authorization": "Bearer nope"}
               ).status_code == 401
    assert get(client, f"/v1/requests/{mine}", {**AUTH, "X-4me-Account": "widget"}
               ).status_code == 401
    for query in ({"updated_since": "last week"}, {"status": "open"}, {"page": "0"},
                  {"per_page": "x"}, {"page": "9" * 5000}):
        response = client.get("/v1/requests", headers=AUTH, query_string=query)
        assert response.status_code == 400, query
        assert response.get_json()["message"]
    assert "updated_since" in get(client, "/v1/requests", updated_since="x").get_json()["message"]


# -- end to end: the seed's curl examples through a real worker ----------------------------------

# The seed's sourceIDs ("attempt1"...) would match requests of an earlier run in a shared
# database (event matching looks 24 h back), so each run gets a source of its own: the seed's
# "Integrations Workshop" with a random suffix (30 characters, the field's limit).
SOURCE = f"Integrations Workshop {uuid.uuid4().hex[:8]}"
HOWARD = {"id": 301, "name": "Howard Tanner"}
TEMPLATE_NOTE = "Please move the desktop PC to the location given below, and reconnect it."
EXAMPLES: list[tuple[str, dict[str, str], dict[str, Any], list[str]]] = [
    # (name, the curl's parameters, what the request shows, its notes)
    ("rfi on a service instance",
     {"source": SOURCE, "sourceID": "attempt1", "subject": "Unable to connect",
      "note": "First time here", "category": "rfi", "requested_for": "",
      "service_instance": "Houston Office Network"},
     {"subject": "Unable to connect", "category": "rfi", "impact": None, "ci": None,
      "service_instance": {"id": 401, "name": "Houston Office Network"},
      "team": {"id": 102, "name": "Network Operations"}, "template": None},
     ["First time here"]),
    ("a template on a CI",
     {"source": SOURCE, "sourceID": "attempt2", "requested_for": "", "ci": "CMP00023",
      "template_id": "1234"},
     {"subject": "Move Widget Data Center desktop PC", "category": "rfc", "impact": "low",
      "ci": {"id": 501, "label": "CMP00023", "name": "Desktop PC CMP00023"},
      "service_instance": {"id": 403, "name": "Widget Data Center Desktops"},
      "team": {"id": 104, "name": "End-User Support"},
      "template": {"id": 1234, "subject": "Move Widget Data Center desktop PC"}},
     [TEMPLATE_NOTE]),
    ("a CI gives the service instance",
     {"source": SOURCE, "sourceID": "attempt3", "subject": "Server Down", "ci": "ABC1234"},
     {"subject": "Server Down", "category": "incident", "impact": "top",
      "ci": {"id": 502, "label": "ABC1234", "name": "Expense Reporting Production Database"},
      "service_instance": {"id": 402, "name": "Expense Reporting Production"},
      "team": {"id": 103, "name": "Database Administration"}, "template": None},
     []),
]


@pytest.fixture(scope="module")
def fourme_vhost(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _vhost(request, "fourme")


@pytest.fixture(scope="module")
def stack(
    fourme_vhost: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = Stack(fourme_vhost, postgres_url, tmp_path_factory.mktemp("worker") / "worker.log")
    yield stack
    stack.worker.stop()


@pytest.fixture
def api(stack: Stack, configure: Callable[..., None]) -> FlaskClient:
    configure(broker_url=stack.broker, database_url=stack.database)
    return create_app().test_client()


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_seed_examples_end_to_end(api: FlaskClient, subtests: pytest.Subtests) -> None:
    # One test with a subtest an example, so that the three share one worker stack.
    for name, parameters, expected, notes in EXAMPLES:
        with subtests.test(name):
            check_example(api, parameters, expected, notes)


def received(api: FlaskClient, code: str) -> float:
    """``eventdesk_events_received_total`` of the 4me channel and ``code``, from /metrics."""
    wanted = f'eventdesk_events_received_total{{channel="4me",code="{code}"}} '
    lines = api.get("/metrics").get_data(as_text=True).splitlines()
    return sum(float(line[len(wanted):]) for line in lines if line.startswith(wanted))


def check_example(
    api: FlaskClient, parameters: dict[str, str], expected: dict[str, Any], notes: list[str]
) -> None:
    # As the seed's curl sends it: a JSON body with the form content type.
    headers = {**AUTH, "Prefer": "wait=10"}
    accepted = received(api, "202")
    created = post(api, headers, data=json.dumps(parameters), content_type=FORM)
    request = created.get_json()
    assert created.status_code == 201, request
    assert received(api, "202") == accepted + 1  # the intake queued it: 201 is the worker's
    assert created.headers["Preference-Applied"] == "wait=10"
    assert created.headers["Location"] == f"/v1/requests/{request['id']}"
    assert request == {**request, **expected, "source": SOURCE,
                       "sourceID": parameters["sourceID"], "status": "assigned",
                       "requested_by": HOWARD, "requested_for": HOWARD, "created_by": HOWARD}

    # Again within 24 h: event matching finds it, and nothing is added.
    again = post(api, headers, data=json.dumps(parameters), content_type=FORM)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["id"] == request["id"]
    transaction = get(api, f"/v1/transactions/{again.headers['X-Transid']}").get_json()
    assert (transaction["channel"], transaction["outcome"]["action"]) == ("4me", "unchanged")

    found = get(api, "/v1/requests", source=SOURCE, sourceID=parameters["sourceID"]).get_json()
    assert [item["id"] for item in found] == [request["id"]]
    assert get(api, f"/v1/requests/{request['id']}").get_json() == again.get_json()
    listed = get(api, f"/v1/requests/{request['id']}/notes").get_json()
    assert [note["text"] for note in listed] == notes
