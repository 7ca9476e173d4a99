"""Control characters at both event intakes: one rule (shared.requests.fields.check_text).

A NUL can never be stored in PostgreSQL text, so an event carrying one must be refused at the
door, with the same answer on SQLite and PostgreSQL, never queued and never a 5xx. Tab, CR and
LF are text like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.requests.fields import CONTROL_MESSAGE, FIELDS, check_text
from tests.conftest import queued_messages
from tests.test_fourme_api import AUTH, EVENT
from tests.test_fourme_api import PATH as FOURME_PATH
from tests.test_webex_api import GOOD_EVENT, post, to_xml

pytestmark = pytest.mark.redis

DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
REFUSED = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x0e", "\x1b", "\x1f"]


@pytest.fixture(params=DATABASES)
def any_db_client(
    request: pytest.FixtureRequest, make_client: Callable[..., FlaskClient]
) -> FlaskClient:
    """The api on each database: an evtid is looked up there, unless refused before."""
    return make_client(database_url=request.getfixturevalue(f"{request.param}_url"))


@pytest.mark.parametrize("char", REFUSED)
def test_the_rule_refuses_c0_controls(char: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        check_text(f"a{char}b")


def test_the_rule_keeps_tab_cr_lf_and_the_rest() -> None:
    for value in ("a\tb\r\nc", "", "é ü 漢 \x7f \u2028 🙂"):
        assert check_text(value) == value


WEBEX_EVENTS = {
    "evtid": {**GOOD_EVENT, "evtid": "server\x00down"},
    "correlationid": {**GOOD_EVENT, "correlationid": "c\x00"},
    "parameter name": {**GOOD_EVENT, "parameters": {"host": "db1", "no\x00te": "x"}},
    "parameter value": {**GOOD_EVENT, "parameters": {"host": "db\x001"}},
    "field value": {**GOOD_EVENT, "parameters": {"host": "db1", "subject": "disk\x01full"}},
}


@pytest.mark.parametrize("field", WEBEX_EVENTS)
def test_webex_json_event_with_a_nul_is_7004_and_its_neighbour_queues(
    any_db_client: FlaskClient, broker: str, field: str
) -> None:
    status, entries, _ = post(any_db_client, {"events": [WEBEX_EVENTS[field], GOOD_EVENT]})
    assert (status, [e["code"] for e in entries]) == (200, ["7004", "1002"]), entries
    assert "control characters" in entries[0]["detail"]
    # A correlationid is echoed back, unless it is the refused value.
    assert entries[0].get("correlationid") == (None if field == "correlationid" else "c1")
    (batch,) = queued_messages(broker)
    assert [e["transid"] for e in batch["events"]] == [entries[1]["transid"]]


def test_webex_json_event_alone_with_a_nul_evtid_is_7004_not_7005(
    any_db_client: FlaskClient, broker: str
) -> None:
    status, entries, _ = post(any_db_client, {"events": [WEBEX_EVENTS["evtid"]]})
    assert (status, [e["code"] for e in entries]) == (400, ["7004"])
    assert queued_messages(broker) == []


def test_webex_json_notifyurl_with_a_nul_is_7004(any_db_client: FlaskClient, broker: str) -> None:
    body = {"notifyurl": "https://example.com/ho\x00ok", "events": [GOOD_EVENT]}
    status, entries, _ = post(any_db_client, body)
    assert (status, [e["code"] for e in entries]) == (400, ["7004"])
    assert "control characters" in entries[0]["detail"]
    assert queued_messages(broker) == []


def test_webex_tab_cr_lf_are_queued(client: FlaskClient, broker: str) -> None:
    event = {**GOOD_EVENT, "correlationid": "c\t1",
             "parameters": {"host": "db1", "note": "line 1\r\nline 2\tend"}}
    for fmt in ("json", "xml"):
        status, entries, _ = post(client, {"events": [event]}, fmt=fmt)
        assert (status, [e["code"] for e in entries]) == (200, ["1002"]), (fmt, entries)
    assert len(queued_messages(broker)) == 2


# XML 1.0 has no way to carry these characters: neither raw nor as a character reference
# (&#0;, &#1;). Such a document is not XML, so the parser refuses it before any field exists:
# 7027 Invalid XML, a 400 like 7004, never a 5xx, never queued (docs/api.md, "Codes").
XML_EVENTS = {
    "evtid": b"<evtid>server&#0;down</evtid>",
    "correlationid": b"<evtid>server-down</evtid><correlationid>c&#1;</correlationid>",
    "parameter value": b"<evtid>server-down</evtid><parameters><host>db&#0;1</host></parameters>",
    "raw NUL byte": b"<evtid>server-down</evtid><parameters><host>db\x001</host></parameters>",
}


@pytest.mark.parametrize("field", XML_EVENTS)
def test_webex_xml_cannot_carry_a_nul_and_is_refused_400(
    any_db_client: FlaskClient, broker: str, field: str
) -> None:
    body = (b"<request><notifyurl>https://example.com/hook</notifyurl><events><event>"
            + XML_EVENTS[field] + b"</event></events></request>")
    status, entries, _ = post(any_db_client, None, fmt="xml", raw=body)
    assert (status, [e["code"] for e in entries]) == (400, ["7027"])
    assert queued_messages(broker) == []


def test_webex_xml_notifyurl_reference_to_nul_is_refused_400(
    client: FlaskClient, broker: str
) -> None:
    body = to_xml({"events": [GOOD_EVENT]}).replace(
        b"<events>", b"<notifyurl>https://example.com/&#0;</notifyurl><events>")
    status, entries, _ = post(client, None, fmt="xml", raw=body)
    assert (status, [e["code"] for e in entries]) == (400, ["7027"])
    assert queued_messages(broker) == []


def _fourme_post(client: FlaskClient, how: str, parameters: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {"json": parameters} if how == "json" else (
        {"data": parameters} if how == "form" else {"query_string": parameters})
    return client.post(FOURME_PATH, headers=AUTH, **kwargs)


@pytest.mark.parametrize("how", ["json", "form", "query"])
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_4me_every_field_with_a_nul_is_422_naming_it(
    client: FlaskClient, broker: str, how: str, name: str
) -> None:
    response = _fourme_post(client, how, {**EVENT, name: "x\x00y"})
    assert response.status_code == 422, response.get_json()
    assert response.get_json() == {"message": "Validation failed",
                                   "errors": [{"field": name, "message": CONTROL_MESSAGE}]}
    assert queued_messages(broker) == []


def test_4me_field_with_a_nul_is_422_on_postgres_too(
    any_db_client: FlaskClient, broker: str
) -> None:
    response = _fourme_post(any_db_client, "json", {**EVENT, "subject": "Server\x00Down"})
    assert response.status_code == 422
    assert queued_messages(broker) == []


def test_4me_tab_cr_lf_are_queued(client: FlaskClient, broker: str) -> None:
    response = _fourme_post(client, "json", {**EVENT, "note": "line 1\r\nline 2\tend"})
    assert response.status_code == 202, response.get_json()
    assert len(queued_messages(broker)) == 1
