"""Issue 10, items 5, 6, 7 and 10: what an event definition makes of a Webex event's parameters
(templates, mapping, precedence), default notify URLs and the notify URL checks at intake, and
a matched update that needs a member.

The rules are pure functions (tested as such); then once through the worker's rules on SQLite
and PostgreSQL, and through the api's intake.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from flask.testing import FlaskClient
from sqlalchemy import create_engine, inspect, select

from shared.db.engine import dispose_engines, session_scope
from shared.db.migrate import alembic_config, upgrade
from shared.db.models import NotificationDelivery, Request, Transaction
from shared.intake.webex.schemas import check_notify_url
from shared.notify.urls import intake_refusal
from shared.records.directory import Directory
from shared.records.importer import RecordsError, import_records
from shared.requests.defaults import Draft
from shared.requests.matching import changes
from shared.requests.shaping import Shaping, Template
from shared.transactions.schemas import EventBatch
from shared.transactions.service import process_batches
from shared.transactions.views import transaction_view
from tests.conftest import queued_messages, throwaway_database

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PATH = "/resources/v1/events/externalevent/"


def shaping(**definition: Any) -> Shaping:
    return Shaping.of(
        defaults=definition.get("defaults", {}), mapping=definition.get("mapping", {}),
        subject_template=definition.get("subject_template"),
        note_template=definition.get("note_template"),
    )


# --- item 5: templates ---------------------------------------------------------------------


def test_a_template_names_parameters() -> None:
    assert Template.parse("{host} is down").render({"host": "db1"}) == "db1 is down"
    assert Template.parse("{ host }: {check}").render({"host": "db1", "check": "ping"}) == \
        "db1: ping"


def test_template_braces_and_missing_parameters() -> None:
    template = Template.parse("{{{host}}} {missing}on {{lit}}")
    # Doubled braces are literal; a missing parameter is empty text; a value is never read
    # as a template itself.
    assert template.render({"host": "{x}"}) == "{{x}} on {lit}"


@pytest.mark.parametrize("text", ["{", "}", "{}", "{host", "host}", "a {b} }", "{a{b}}"])
def test_a_template_with_unmatched_or_empty_braces_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="template"):
        Template.parse(text)


def test_templates_shape_subject_and_note_unless_the_event_gives_them() -> None:
    shape = shaping(subject_template="{host} is down", note_template="{host}: {check}",
                    defaults={"check": "ping", "subject": "Server down"})
    assert shape.fields({"host": "db1"}) == {
        "subject": "db1 is down", "note": "db1: ping",
    }
    assert shape.fields({"host": "db1", "subject": "Mine", "check": "http"}) == {
        "subject": "Mine", "note": "db1: http",
    }


def test_a_template_that_renders_blank_sets_nothing() -> None:
    shape = shaping(subject_template="{host}", defaults={"subject": "Server down"})
    # Nothing of the template's: the definition's plain default applies.
    assert shape.fields({"host": "  "}) == {"subject": "Server down"}
    assert shaping(subject_template="{host}").fields({}) == {}


# --- item 7: precedence ----------------------------------------------------------------------


@pytest.mark.parametrize("order", ["field first", "mapped first"])
def test_the_field_by_its_own_name_wins_over_a_parameter_mapped_onto_it(order: str) -> None:
    shape = shaping(mapping={"host": "ci"})
    items = [("ci", "CMP00023"), ("host", "db1")]
    parameters = dict(items if order == "field first" else reversed(items))
    assert shape.fields(parameters) == {"ci": "CMP00023"}


@pytest.mark.parametrize("order", ["a first", "b first"])
def test_of_two_parameters_mapped_onto_one_field_the_first_name_wins(order: str) -> None:
    shape = shaping(mapping={"node": "ci", "host": "ci"})
    items = [("host", "h1"), ("node", "n1")]
    parameters = dict(items if order == "a first" else reversed(items))
    assert shape.fields(parameters) == {"ci": "h1"}


def test_what_the_event_gives_wins_over_what_the_definition_gives() -> None:
    shape = shaping(mapping={"host": "ci"}, defaults={"ci": "ABC1234", "impact": "high"})
    assert shape.fields({"host": "db1"}) == {"ci": "db1", "impact": "high"}
    assert shape.fields({"host": " ", "impact": ""}) == {"ci": "ABC1234", "impact": "high"}


# --- item 6: notify URLs at intake -----------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://exa mple.com/hook", "http://example.com/a b", " http://example.com/",
    "http:///hook", "http://:80/hook", "http://ex$ample.com/", "http://host..com/",
    "http://-host.com/", "http://example.com:0/", "http://example.com:99999/",
])
def test_a_notify_url_that_cannot_be_valid_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="notifyurl"):
        check_notify_url(url)


@pytest.mark.parametrize("url", [
    "https://example.com/hook", "http://example.com:8080/a?b=c#d", "https://bücher.de/h",
    "http://[2001:db8::1]/h", "http://user:pw@hooks.example.com/",
])
def test_a_valid_notify_url_passes(url: str) -> None:
    assert check_notify_url(url) == url


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:9/hook", "loopback"),
    ("http://127.1/hook", "loopback"),
    ("http://2130706433/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("http://169.254.169.254/latest", "metadata"),
    ("http://localhost:8080/hook", "loopback"),
    ("http://api.localhost/hook", "loopback"),
])
def test_a_notify_url_the_ssrf_guard_will_refuse_is_refused_at_intake(url: str, why: str) -> None:
    problem = intake_refusal(url, ())
    assert problem is not None
    assert why in problem
    assert "EVENTDESK_NOTIFY_ALLOW_NETWORKS" in problem


def test_intake_knows_the_allow_list_and_does_no_dns() -> None:
    allow = (ip_network("127.0.0.0/8"), ip_network("169.254.0.0/16"))
    assert intake_refusal("http://127.0.0.1:9/hook", allow) is None
    # localhost may resolve to 127.0.0.1 alone: the worker decides on what it resolves to.
    assert intake_refusal("http://localhost:9/hook", allow) is None
    refusal = intake_refusal("http://169.254.169.254/", allow)
    assert refusal is not None
    assert "metadata" in refusal
    assert intake_refusal("http://hooks.internal.example/", ()) is None


# --- item 10: a matched update that needs a member ------------------------------------------


def test_a_matched_update_to_a_status_needing_a_member_sets_the_member() -> None:
    draft = Draft(account_id="wdc", status="in_progress", member_id=301,
                  explicit=frozenset({"status"}))
    assert changes(draft, {"status": "assigned", "member_id": None}) == {
        "status": "in_progress", "member_id": 301,
    }
    # A request that has its member keeps it; a status needing none adds none.
    assert changes(draft, {"status": "assigned", "member_id": 303}) == {"status": "in_progress"}
    waiting = Draft(account_id="wdc", status="on_backlog", explicit=frozenset({"status"}))
    assert changes(waiting, {"status": "assigned", "member_id": None}) == {"status": "on_backlog"}


# --- through the worker's rules (SQLite and PostgreSQL) -------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def add_definition(db: str, **fields: Any) -> str:
    evtid = f"shaped-{uuid.uuid4().hex[:12]}"
    with session_scope(db) as session:
        import_records(session, {"event_definitions": [
            {"account": "wdc", "evtid": evtid, "action": "request", **fields}]})
    return evtid


def run(db: str, *events: dict[str, Any], **batch: Any) -> EventBatch:
    events_batch = EventBatch.model_validate({
        "channel": "webex", "account_id": "wdc", "received_at": NOW - timedelta(seconds=1),
        "events": [{"transid": uuid.uuid4().hex, **event} for event in events], **batch,
    })
    with session_scope(db) as session:
        process_batches(session, [events_batch], NOW, Directory(0))
    return events_batch


def request_of(db: str, transid: str) -> Request:
    with session_scope(db) as session:
        row = session.get(Transaction, transid)
        assert row is not None
        assert row.status == "completed", row.error
        assert row.outcome is not None
        request = session.get(Request, row.outcome["request_id"])
        assert request is not None
        return request


def test_the_demo_server_down_makes_a_request_per_host(db: str) -> None:
    source = uuid.uuid4().hex[:20]
    done = run(db, *({"evtid": "server-down", "parameters": {"host": host, "source": source}}
                     for host in ("db1", "web7", "db1")))
    first, second, again = (request_of(db, event.transid) for event in done.events)
    assert (first.subject, second.subject) == ("db1 is down", "web7 is down")
    assert first.id != second.id
    assert again.id == first.id


def test_without_a_subject_or_template_the_request_is_named_after_the_evtid(db: str) -> None:
    evtid = add_definition(db)
    done = run(db, {"evtid": evtid, "parameters": {"source": uuid.uuid4().hex[:20]}})
    assert request_of(db, done.events[0].transid).subject == evtid


def test_the_transaction_view_shows_the_parameters(db: str) -> None:
    evtid = add_definition(db, subject_template="{host} is down", mapping={"host": "ci"})
    done = run(db, {"evtid": evtid, "parameters": {"host": "CMP00023", "check": "ping"}})
    with session_scope(db) as session:
        view = transaction_view(session, "wdc", done.events[0].transid)
    assert view is not None
    assert view.to_json()["parameters"] == {"host": "CMP00023", "check": "ping"}
    request = request_of(db, done.events[0].transid)
    assert (request.subject, request.ci_id) == ("CMP00023 is down", 501)


def test_a_default_notify_url_on_the_event_gets_the_delivery(db: str) -> None:
    done = run(db, {"evtid": "server-down", "notifyurl": "https://example.com/definition",
                    "parameters": {"host": uuid.uuid4().hex}},
               {"evtid": "server-down", "parameters": {"host": uuid.uuid4().hex}})
    with session_scope(db) as session:
        urls = {row.transid: row.url for row in session.scalars(select(NotificationDelivery)
                .where(NotificationDelivery.transid.in_([e.transid for e in done.events])))}
        stored = session.get(Transaction, done.events[0].transid)
        assert stored is not None
        assert stored.notifyurl == "https://example.com/definition"
    assert urls == {done.events[0].transid: "https://example.com/definition"}


def test_a_matched_update_to_in_progress_gets_the_senders_member(db: str) -> None:
    source = uuid.uuid4().hex[:20]
    from tests.test_matching import demo_key_id

    base = {"host": "db9", "source": source, "note": source}
    first = run(db, {"evtid": "server-down", "parameters": base}, key_id=demo_key_id(db))
    created = request_of(db, first.events[0].transid)
    assert (created.status, created.member_id) == ("assigned", None)
    update = run(db, {"evtid": "server-down", "parameters": {**base, "status": "in_progress"}},
                 key_id=demo_key_id(db))
    updated = request_of(db, update.events[0].transid)
    assert updated.id == created.id
    assert (updated.status, updated.member_id) == ("in_progress", 301)  # Howard, the key's


def test_import_refuses_a_template_or_notify_url_that_cannot_work(sqlite_url: str) -> None:
    for fields, problem in (({"subject_template": "{host is down"}, "subject_template: temp"),
                            ({"note_template": "}"}, "note_template: template: unmatched"),
                            ({"notifyurl": "http://exa mple.com/"}, "notifyurl: notifyurl")):
        with pytest.raises(RecordsError, match=problem):
            add_definition(sqlite_url, **fields)
    with session_scope(sqlite_url) as session, \
            pytest.raises(RecordsError, match="notifyurl: notifyurl must be"):
        import_records(session, {"api_keys": [
            {"account": "wdc", "name": "n", "key": uuid.uuid4().hex, "notifyurl": "nope"}]})


# --- through the api's intake ----------------------------------------------------------------


@pytest.mark.redis
def test_intake_resolves_the_default_notify_url_per_event(
    make_client: Callable[..., FlaskClient], sqlite_url: str, broker: str
) -> None:
    with_url = add_definition(sqlite_url, notifyurl="https://example.com/definition")
    client = make_client()
    key = uuid.uuid4().hex
    with session_scope(sqlite_url) as session:
        import_records(session, {"api_keys": [{"account": "wdc", "name": "k", "key": key,
                                               "notifyurl": "https://example.com/key"}]})

    def post(body: dict[str, Any]) -> list[dict[str, Any]]:
        response = client.post(PATH, json=body, headers={"key": key})
        assert response.status_code == 200, response.get_json()
        return response.get_json()["response"]  # type: ignore[no-any-return]

    post({"events": [{"evtid": with_url}, {"evtid": "server-down", "parameters": {"host": "h"}}]})
    post({"notifyurl": "https://example.com/body", "events": [{"evtid": with_url}]})
    # The queue is a list pushed on the left: the newest message comes first.
    second, first = queued_messages(broker)
    assert first["notifyurl"] is None
    assert [e.get("notifyurl") for e in first["events"]] == [
        "https://example.com/definition", "https://example.com/key"]
    # The body's notifyurl wins over both defaults.
    assert second["notifyurl"] == "https://example.com/body"
    assert [e.get("notifyurl") for e in second["events"]] == [None]


@pytest.mark.redis
def test_intake_refuses_a_notify_url_the_guard_will_refuse(
    make_client: Callable[..., FlaskClient], sqlite_url: str, broker: str
) -> None:
    client = make_client()
    event = {"evtid": "server-down", "parameters": {"host": "h"}}
    for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://exa mple.com/"):
        response = client.post(PATH, json={"notifyurl": url, "events": [event]},
                               headers={"key": "demo-key"})
        assert response.status_code == 400
        (entry,) = response.get_json()["response"]
        assert (entry["code"], "transid" in entry) == ("7004", False)
        assert "notifyurl" in entry["detail"]
    bad_default = add_definition(sqlite_url, notifyurl="http://10.0.0.7/hook")
    response = client.post(PATH, json={"events": [event, {"evtid": bad_default}]},
                           headers={"key": "demo-key"})
    assert response.status_code == 200
    good, refused = response.get_json()["response"]
    assert (good["code"], refused["code"]) == ("1002", "7004")
    assert "private" in refused["detail"]
    assert len(queued_messages(broker)) == 1
    allowed = make_client(notify_allow_networks="127.0.0.0/8")
    response = allowed.post(PATH, json={"notifyurl": "http://127.0.0.1:9/hook", "events": [event]},
                            headers={"key": "demo-key"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migration_0004_goes_down_and_up_again(backend: str, tmp_path: Path) -> None:
    def columns(url: str, table: str) -> set[str]:
        engine = create_engine(url)
        try:
            return {column["name"] for column in inspect(engine).get_columns(table)}
        finally:
            engine.dispose()

    def check(url: str) -> None:
        new = {"subject_template", "note_template", "notifyurl"}
        assert new <= columns(url, "event_definitions")
        command.downgrade(alembic_config(url), "0003")
        assert not new & columns(url, "event_definitions")
        assert "notifyurl" not in columns(url, "api_keys")
        upgrade(url)
        assert new <= columns(url, "event_definitions")
        assert "notifyurl" in columns(url, "api_keys")
        dispose_engines()

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'migrate.sqlite'}"
        upgrade(url)
        check(url)
    else:
        with throwaway_database("eventdesk_migrate") as url:
            check(url)
