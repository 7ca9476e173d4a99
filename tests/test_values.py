"""What the caller is told is what happens (issue 10, items 1-4, 9, 11): a value the intakes
accept is one the worker can act on, and a bad value is a 4xx, never a 5xx.

The shared parsers are tested alone; the routes through the in-process api on SQLite and a real
Redis broker (messages read back off the queue, no worker: tests/test_values_property.py runs
generated bodies through a real one).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.requests.defaults import build_draft
from shared.requests.fields import (
    MAX_ID,
    FieldErrors,
    check_fields,
    parse_id,
    parse_int,
    parse_timestamp,
)
from tests.conftest import queued_messages
from tests.test_fourme_api import AUTH, EVENT
from tests.test_fourme_api import PATH as FOURME_PATH
from tests.test_webex_api import GOOD_EVENT, post

# -- item 1: one set of parsers ------------------------------------------------------------------

WIDE_YEAR = "\uff12\uff10\uff12\uff16"  # 2026 in fullwidth digits, which \d matches

NOT_IDS = ["³", "²", "٣", "\uff11", "1 2", "1_0", "-1", "+1", "1.0", str(MAX_ID + 1), "9" * 5000,
           ""]


@pytest.mark.parametrize("value", NOT_IDS)
def test_an_id_is_ascii_digits_within_bigint(value: str) -> None:
    with pytest.raises(ValueError, match="numeric id"):
        parse_id(value)
    with pytest.raises(FieldErrors):
        check_fields({"requested_by_id": value or "x"})


def test_ids_at_the_edges_are_taken() -> None:
    assert (parse_id("0"), parse_id(str(MAX_ID)), parse_id("007")) == (0, MAX_ID, 7)
    assert parse_int("100", 1, 100) == 100
    with pytest.raises(ValueError, match="from 1 to 100"):
        parse_int("101", 1, 100)


OUT_OF_RANGE = ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:59:59", "0001-01-01T00:00:00Z"]


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_a_time_out_of_range_is_refused_not_an_overflow(value: str) -> None:
    with pytest.raises(ValueError, match="must lie between"):
        parse_timestamp(value)


def test_times_are_utc_and_the_4me_format_is_ascii() -> None:
    assert parse_timestamp("2026-01-01T00:00:00+05:00") == datetime(2025, 12, 31, 19, tzinfo=UTC)
    assert parse_timestamp("2026-01-01T00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    for bad in (WIDE_YEAR + "-01-01T00:00", "9999-12-31T23:59Z"):
        with pytest.raises(FieldErrors):
            check_fields({"waiting_until": bad})


def test_the_worker_takes_every_id_the_intake_takes() -> None:
    # build_draft parses with parse_id too: nothing check_fields lets in can fail there.
    class NoRecords:
        home = type("Home", (), {"account_id": "wdc", "agreements": ()})()

        def by_id(self, _kind: str, value: int) -> None:
            assert isinstance(value, int)

        def ci(self, _label: str) -> None:
            return None

    fields = check_fields({"requested_by_id": str(MAX_ID), "ci_id": "0012", "subject": "s"})
    draft = build_draft(fields, NoRecords(), None, "4me")  # type: ignore[arg-type]
    assert draft.unresolved == {"requested_by_id": str(MAX_ID), "ci_id": "0012"}


# -- items 1 and 2 at the Webex intake -----------------------------------------------------------


def webex_event(correlationid: str, **parameters: str) -> dict[str, Any]:
    good: dict[str, Any] = GOOD_EVENT
    return {**good, "correlationid": correlationid,
            "parameters": {**good["parameters"], **parameters}}


@pytest.mark.redis
@pytest.mark.parametrize("poison", [
    {"requested_by_id": "³"}, {"member_id": "²"}, {"team_id": str(MAX_ID + 1)},
    {"waiting_until": "9999-12-31T23:59Z"}, {"downtime_start_at": WIDE_YEAR + "-01-01T00:00"},
])
def test_a_poison_value_is_refused_at_intake_and_its_neighbours_queue(
    client: FlaskClient, broker: str, poison: dict[str, str]
) -> None:
    body = {"events": [webex_event("a"), webex_event("b", **poison), webex_event("c")]}
    status, entries, _ = post(client, body)
    assert (status, [e["code"] for e in entries]) == (200, ["1002", "7004", "1002"])
    assert entries[1]["correlationid"] == "b"
    queued = [e["correlationid"] for b in queued_messages(broker) for e in b["events"]]
    assert queued == ["a", "c"]


@pytest.mark.redis
@pytest.mark.parametrize("value", ["³", "9223372036854775808", "\uff11\uff12"])
def test_a_poison_id_is_422_on_the_4me_intake(client: FlaskClient, broker: str, value: str
                                              ) -> None:
    response = client.post(FOURME_PATH, headers=AUTH, json={**EVENT, "requested_by_id": value})
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["field"] == "requested_by_id"
    assert queued_messages(broker) == []


# -- item 3: a bad value is a 4xx ----------------------------------------------------------------

@pytest.mark.redis
@pytest.mark.parametrize("expiry", OUT_OF_RANGE)
def test_an_expiry_out_of_range_is_7004(client: FlaskClient, broker: str, expiry: str) -> None:
    status, entries, _ = post(client, {"expiry": expiry, "events": [GOOD_EVENT]})
    assert (status, [e["code"] for e in entries]) == (400, ["7004"])
    assert "expiry" in entries[0]["detail"]
    assert queued_messages(broker) == []


KEY = {"key": "demo-key"}
BAD_QUERIES = [
    "/v1/requests?updated_since=%00",
    "/v1/requests?source=%00",
    "/v1/requests?sourceID=a%01b",
    "/v1/requests?status=%00",
    "/v1/requests?page=99999999999999999999999",
    "/v1/requests?page=%C2%B3",
    "/v1/requests?per_page=-1",
    "/v1/requests/1/notes?page=99999999999999999999999",
    "/v1/deliveries?before=99999999999999999999999",
    "/v1/deliveries?before=%C2%B3",
    "/v1/deliveries?limit=99999999999999999999999",
    "/v1/deliveries?status=%00",
]


@pytest.mark.redis
@pytest.mark.parametrize("path", BAD_QUERIES)
def test_a_bad_query_parameter_is_400(client: FlaskClient, path: str) -> None:
    response = client.get(path, headers=KEY)
    assert response.status_code == 400, response.data
    name = path.split("?")[1].split("=", maxsplit=1)[0]
    assert response.get_json()["message"].startswith(name)


@pytest.mark.redis
@pytest.mark.parametrize(("since", "end"), [
    ("9999-12-31T23:59:59-05:00", "9999-12-30T23:59:59.999999Z"),
    ("0001-01-01T00:00:00%2B01:00", "0001-01-02T00:00:00Z"),
])
def test_a_time_past_the_range_filters_as_its_end(client: FlaskClient, since: str, end: str
                                                   ) -> None:
    # Valid RFC 3339 times (the documented format), though no datetime once in UTC.
    past = client.get(f"/v1/requests?updated_since={since}", headers=KEY)
    assert past.status_code == 200, past.data
    assert past.get_json() == client.get(f"/v1/requests?updated_since={end}",
                                         headers=KEY).get_json()


@pytest.mark.redis
@pytest.mark.parametrize("path", [
    "/v1/transactions/" + "é" * 32, "/v1/transactions/" + "%00" * 32, "/v1/transactions/%00",
    "/v1/transactions/" + "A" * 32, f"/v1/requests/{MAX_ID + 1}", "/v1/requests/³",
])
def test_an_id_that_can_be_no_record_is_404(client: FlaskClient, path: str) -> None:
    assert client.get(path, headers=KEY).status_code == 404
    if path.startswith("/v1/transactions/"):
        assert client.post(path + "/redeliver", headers=KEY).status_code == 404


# -- item 4: chunked bodies obey the limit -------------------------------------------------------

def chunked(client: FlaskClient, path: str, body: bytes, headers: dict[str, str]) -> Any:
    # No Content-Length, as gunicorn hands over a chunked body (wsgi.input_terminated).
    return client.post(path, input_stream=io.BytesIO(body), headers={
        **headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked",
    }, environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True})


@pytest.mark.redis
def test_a_chunked_4me_body_over_the_limit_is_413(
    make_client: Callable[..., FlaskClient], broker: str
) -> None:
    client = make_client(max_body_bytes=2048)
    # Valid JSON at any cut: a truncated read would be accepted as a shorter note.
    big = json.dumps({**EVENT, "note": "x" * 4000}).encode()
    response = chunked(client, FOURME_PATH, big, AUTH)
    assert response.status_code == 413, response.data
    assert "2048" in response.get_json()["message"]
    small = json.dumps(EVENT).encode()
    assert chunked(client, FOURME_PATH, small, AUTH).status_code == 202
    assert len(queued_messages(broker)) == 1


# -- item 9: the same account rule everywhere ----------------------------------------------------

@pytest.mark.redis
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/transactions/" + "0" * 32),
    ("POST", "/v1/transactions/" + "0" * 32 + "/redeliver"),
    ("GET", "/v1/deliveries"), ("GET", "/v1/requests"), ("GET", "/v1/requests/1"),
    ("GET", "/v1/requests/1/notes"), ("POST", "/v1/events"),
])
@pytest.mark.parametrize("credentials", [KEY, {"Authorization": "Bearer demo-key"}])
def test_an_account_header_of_another_account_is_401(
    client: FlaskClient, method: str, path: str, credentials: dict[str, str]
) -> None:
    response = client.open(path, method=method, json=EVENT,
                           headers={**credentials, "X-4me-Account": "someone-else"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if path != FOURME_PATH or "Authorization" in credentials:  # it takes a bearer token only
        assert response.get_json() == {"message": "The token is not valid for this account"}


# -- item 11: protocol hygiene -------------------------------------------------------------------

@pytest.mark.redis
@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v1/events", {"POST", "OPTIONS"}),
    ("POST", "/v1/requests", {"GET", "HEAD", "OPTIONS"}),
    ("DELETE", "/v1/transactions/" + "0" * 32, {"GET", "HEAD", "OPTIONS"}),
    ("GET", "/v1/transactions/" + "0" * 32 + "/redeliver", {"POST", "OPTIONS"}),
    ("PUT", "/healthz", {"GET", "HEAD", "OPTIONS"}),
    ("PUT", "/resources/v1/events/externalevent/", {"POST"}),
])
def test_every_405_carries_allow(client: FlaskClient, method: str, path: str, allow: set[str]
                                 ) -> None:
    response = client.open(path, method=method, headers=KEY)
    assert response.status_code == 405
    assert response.is_json
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == allow


@pytest.mark.redis
def test_null_means_absent(client: FlaskClient, broker: str) -> None:
    event = {**GOOD_EVENT, "evtid": "server-down", "parameters": None, "correlationid": None}
    status, entries, _ = post(client, {"expiry": None, "notifyurl": None, "events": [event]})
    # No parameters at all: the definition's mandatory host is missing, as if none were sent.
    assert (status, [e["code"] for e in entries]) == (400, ["7025"])


@pytest.mark.redis
@pytest.mark.parametrize("evtid", [None, "", "   "])
def test_an_empty_evtid_is_as_missing_as_none(client: FlaskClient, evtid: str | None) -> None:
    event = {"correlationid": "c1"} if evtid is None else {"evtid": evtid, "correlationid": "c1"}
    status, entries, _ = post(client, {"events": [event]})
    assert (status, [e["code"] for e in entries]) == (400, ["7003"])


@pytest.mark.redis
@pytest.mark.parametrize("host", ["", "   ", "\t\n", None])
def test_a_mandatory_parameter_of_whitespace_is_missing(client: FlaskClient, host: str | None
                                                        ) -> None:
    event = {"evtid": "server-down", "parameters": {"host": host}}
    status, entries, _ = post(client, {"events": [event]})
    assert (status, [e["code"] for e in entries]) == (400, ["7025"])


@pytest.mark.redis
@pytest.mark.parametrize(("body", "content_type"), [
    (b'{"subject": ', "application/json"),
    (b"subject=%FF%FE", "application/x-www-form-urlencoded"),
    (b"subject", "application/x-www-form-urlencoded"),
    (b'{"subject": "s", "note": 1' + b"0" * 5000 + b"}", "application/json"),
])
def test_4me_errors_never_echo_python_exception_text(
    client: FlaskClient, body: bytes, content_type: str
) -> None:
    response = client.post(FOURME_PATH, headers=AUTH, data=body, content_type=content_type)
    assert response.status_code in (400, 422)
    text = response.get_data(as_text=True)
    for python in ("line 1 column", "codec", "Exceeds the limit", "EOF", "sys.set_int", "'='"):
        assert python not in text
