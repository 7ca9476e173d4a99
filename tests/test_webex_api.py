"""The Webex Connect front door as a caller sees it: every code, in JSON and in XML.

The api publishes to a real Redis (no worker here: the message is read back off the queue).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from xml.sax.saxutils import escape

import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import create_app, webex
from shared.messaging import EVENTS_PROCESS, EVENTS_QUEUE
from shared.messaging.publish import (
    PUBLISH_TIMEOUT,
    Limited,
    PublishError,
    RedisLimiter,
    make_publisher,
    task_message,
)
from tests.conftest import queued_messages
from tests.resilience.proxy import TcpProxy

pytestmark = pytest.mark.redis

PATH = "/resources/v1/events/externalevent/"
GOOD_EVENT = {
    "evtid": "server-down", "correlationid": "c1",
    "parameters": {"host": "db1", "subject": "Server Down", "source": "nagios", "sourceID": "42"},
}


def to_xml(data: dict[str, Any]) -> bytes:
    def element(tag: str, value: Any) -> str:
        if isinstance(value, dict):
            return f"<{tag}>" + "".join(element(k, v) for k, v in value.items()) + f"</{tag}>"
        return f"<{tag}>{escape(str(value))}</{tag}>"

    parts = [element(k, data[k]) for k in ("expiry", "notifyurl") if k in data]
    if "events" in data:
        events = "".join(element("event", e) for e in data["events"])
        parts.append(f"<events>{events}</events>")
    return ("<request>" + "".join(parts) + "</request>").encode()


def post(client: FlaskClient, data: Any, fmt: str = "json", key: str | None = "demo-key",
         raw: bytes | None = None) -> tuple[int, list[dict[str, Any]], dict[str, str]]:
    headers = {"key": key} if key is not None else {}
    if fmt == "xml":
        body = raw if raw is not None else to_xml(data)
        content_type = "application/xml"
    else:
        body = raw if raw is not None else json.dumps(data).encode()
        content_type = "application/json"
    response = client.post(PATH, data=body, headers=headers, content_type=content_type)
    assert response.is_json, response.data
    return response.status_code, response.get_json()["response"], dict(response.headers)


CASES = [
    # (name, body, key, http status, codes per entry)
    ("queued", {"events": [GOOD_EVENT]}, "demo-key", 200, ["1002"]),
    ("no key", {"events": [GOOD_EVENT]}, None, 401, ["7001"]),
    ("wrong key", {"events": [GOOD_EVENT]}, "not-a-key", 401, ["7001"]),
    ("no events", {"notifyurl": "http://example.com/n"}, "demo-key", 400, ["7003"]),
    ("empty events", {"events": []}, "demo-key", 400, ["7003"]),
    ("event without evtid", {"events": [{"correlationid": "c9"}]}, "demo-key", 400, ["7003"]),
    ("unknown evtid", {"events": [{"evtid": "nope"}]}, "demo-key", 400, ["7004"]),
    ("bad notifyurl", {"notifyurl": "ftp://x/y", "events": [GOOD_EVENT]}, "demo-key", 400,
     ["7004"]),
    ("bad expiry", {"expiry": "tomorrow", "events": [GOOD_EVENT]}, "demo-key", 400, ["7004"]),
    ("long correlationid",
     {"events": [{**GOOD_EVENT, "correlationid": "é" * 26}]}, "demo-key", 400, ["7004"]),
    ("invalid category",
     {"events": [{**GOOD_EVENT, "parameters": {"host": "h", "category": "x"}}]}, "demo-key",
     400, ["7004"]),
    ("mandatory custom missing", {"events": [{"evtid": "server-down"}]}, "demo-key", 400,
     ["7025"]),
    ("one good one bad",
     {"events": [GOOD_EVENT, {"evtid": "server-down", "correlationid": "c2"}]}, "demo-key", 200,
     ["1002", "7025"]),
    ("expiry with millis and Z",
     {"expiry": "2099-04-12T18:51:19.123Z", "events": [GOOD_EVENT]}, "demo-key", 200, ["1002"]),
]


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize(("name", "body", "key", "status", "codes"), CASES,
                         ids=[case[0] for case in CASES])
def test_response_codes(
    client: FlaskClient, broker: str, fmt: str, name: str, body: dict[str, Any], key: str | None,
    status: int, codes: list[str],
) -> None:
    got_status, entries, _ = post(client, body, fmt, key)
    assert (got_status, [e["code"] for e in entries]) == (status, codes), entries
    queued = [e for e in entries if e["code"] == "1002"]
    for item in queued:
        assert item["description"] == "Queued"
        assert len(item["transid"]) == 32
    batches = queued_messages(broker)
    if queued:
        assert len(batches) == 1
        assert [e["transid"] for e in batches[0]["events"]] == [e["transid"] for e in queued]
    else:
        assert batches == []


def test_json_response_echoes_correlationid_and_order(client: FlaskClient) -> None:
    events = [{**GOOD_EVENT, "correlationid": f"c{i}"} for i in range(5)]
    status, entries, _ = post(client, {"events": events})
    assert status == 200
    assert [e["correlationid"] for e in entries] == [f"c{i}" for i in range(5)]
    assert len({e["transid"] for e in entries}) == 5


@pytest.mark.parametrize("body", [b'{"events": [', b"", b"\xff\xfe", b"{'events': []}",
                                  b'{"events": [{"evtid": "x", "parameters": {"n": Infinity}}]}'])
def test_invalid_json_is_7000(client: FlaskClient, body: bytes) -> None:
    status, entries, _ = post(client, None, raw=body)
    assert (status, entries[0]["code"]) == (400, "7000")


@pytest.mark.parametrize("body", [
    b"<request><events>",
    b"not xml at all",
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    b"<request><events><event><evtid>&b;</evtid></event></events></request>",
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<request><events><event><evtid>&x;</evtid></event></events></request>",
    b"<other><events/></other>",
])
def test_invalid_or_hostile_xml_is_7027(client: FlaskClient, body: bytes) -> None:
    status, entries, _ = post(client, None, fmt="xml", raw=body)
    assert (status, entries[0]["code"]) == (400, "7027")


def test_text_xml_is_accepted(client: FlaskClient) -> None:
    response = client.post(PATH, data=to_xml({"events": [GOOD_EVENT]}),
                           headers={"key": "demo-key"}, content_type="text/xml")
    assert response.status_code == 200
    assert response.get_json()["response"][0]["code"] == "1002"


def test_trailing_slash_is_optional_and_key_header_case_insensitive(client: FlaskClient) -> None:
    response = client.post(PATH.rstrip("/"), json={"events": [GOOD_EVENT]},
                           headers={"KEY": "demo-key"})
    assert response.status_code == 200
    assert response.get_json()["response"][0]["code"] == "1002"


def test_too_many_events(make_client: Callable[..., FlaskClient]) -> None:
    client = make_client(max_events_per_request=3)
    status, entries, _ = post(client, {"events": [GOOD_EVENT] * 4})
    assert (status, [e["code"] for e in entries]) == (400, ["7004"])
    status, entries, _ = post(client, {"events": [GOOD_EVENT] * 3})
    assert (status, [e["code"] for e in entries]) == (200, ["1002"] * 3)


def test_body_over_the_limit_is_413_before_reading(
    make_client: Callable[..., FlaskClient], broker: str
) -> None:
    client = make_client(max_body_bytes=2048)
    big = {"events": [{**GOOD_EVENT, "parameters": {"host": "h", "note": "x" * 4000}}]}
    status, entries, _ = post(client, big)
    assert status == 413
    assert entries[0]["code"] == "7004"
    assert queued_messages(broker) == []


def test_a_chunked_body_over_the_limit_is_413_too(
    make_client: Callable[..., FlaskClient], broker: str
) -> None:
    client = make_client(max_body_bytes=2048)
    big = json.dumps({"events": [{**GOOD_EVENT, "parameters": {"note": "x" * 4000}}]}).encode()
    # No Content-Length, as gunicorn gives a chunked body: the limit is found by reading.
    response = client.post(PATH, input_stream=io.BytesIO(big), headers={
        "key": "demo-key", "Content-Type": "application/json", "Transfer-Encoding": "chunked",
    }, environ_overrides={"CONTENT_LENGTH": ""})
    assert response.status_code == 413
    assert response.get_json()["response"][0]["code"] == "7004"
    assert queued_messages(broker) == []


def test_a_number_no_text_stands_for_is_7004(client: FlaskClient) -> None:
    event = {**GOOD_EVENT, "parameters": {"host": "db1", "count": 1e400}}
    status, entries, _ = post(client, None, raw=json.dumps({"events": [event]}).replace(
        "Infinity", "1e400").encode())
    assert (status, entries[0]["code"]) == (400, "7004")
    assert "too large" in entries[0]["detail"]


def test_a_content_length_that_is_no_number_is_7004(client: FlaskClient) -> None:
    response = client.post(PATH, data=b"{}", headers={"key": "demo-key"},
                           content_type="application/json",
                           environ_overrides={"CONTENT_LENGTH": "twelve"})
    assert response.status_code == 400
    assert response.get_json()["response"][0]["code"] == "7004"


def test_other_methods_are_405_in_json(client: FlaskClient) -> None:
    response = client.get(PATH, headers={"key": "demo-key"})
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    assert "POST" in response.get_json()["message"]


def test_an_unexpected_error_is_7005_not_a_500(
    client: FlaskClient, broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake = client.application.extensions["eventdesk.webex"]

    def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(intake, "handle", broken)
    status, entries, _ = post(client, {"events": [GOOD_EVENT]})
    assert (status, [entry["code"] for entry in entries]) == (503, ["7005"])
    assert queued_messages(broker) == []


def test_rate_limit_is_7020_with_retry_after(
    make_client: Callable[..., FlaskClient], broker: str
) -> None:
    client = make_client(rate_limit_per_second=0.5, rate_limit_burst=3)
    status, entries, _ = post(client, {"events": [GOOD_EVENT] * 2})
    assert status == 200
    status, entries, headers = post(client, {"events": [GOOD_EVENT] * 2})
    assert (status, [e["code"] for e in entries]) == (429, ["7020"])
    assert int(headers["Retry-After"]) >= 1
    assert len(queued_messages(broker)) == 1


def test_rate_limit_is_shared_between_api_processes(
    make_client: Callable[..., FlaskClient],
) -> None:
    # Two app instances stand for two gunicorn workers: the bucket lives in Redis.
    first = make_client(rate_limit_per_second=0.5, rate_limit_burst=2)
    second = create_app().test_client()
    assert post(first, {"events": [GOOD_EVENT] * 2})[0] == 200
    assert post(second, {"events": [GOOD_EVENT]})[0] == 429


def test_a_group_is_charged_all_its_keys_or_none(broker: str) -> None:
    limiter = RedisLimiter(broker, rate=0.01, burst=5)
    assert limiter.take({"key:a": 4}) is None
    # key:b could pay, key:a cannot: neither is charged, nothing is pushed.
    limited = limiter.take({"key:b": 5, "key:a": 2}, "events", "message")
    assert limited is not None
    assert limited.retry_after > 0
    assert redis.Redis.from_url(broker).llen("events") == 0
    assert limiter.take({"key:b": 5}, "events", "message") is None
    assert redis.Redis.from_url(broker).lrange("events", 0, -1) == [b"message"]


def test_publishing_threads_that_come_and_go_share_a_few_connections(broker: str) -> None:
    """The mail intake's wake-up thread lives for one stream; a listener sees thousands. Each
    such thread's publish goes through, on a connection an earlier thread used."""
    limiter = RedisLimiter(broker, rate=1000, burst=1000)
    server = redis.Redis.from_url(broker)
    database = int(broker.rsplit("/", 1)[1])

    def connections() -> set[int]:  # ids: other tests' clients may close meanwhile
        return {int(entry["id"]) for entry in server.client_list()
                if entry["name"] == "eventdesk-api" and int(entry["db"]) == database}

    before = connections()
    for number in range(150):  # redis-py's pool refuses its 101st connection
        thread = threading.Thread(target=limiter.take, args=({}, "mail", f"m{number}"))
        thread.start()
        thread.join()
    assert server.llen("mail") == 150
    assert len(connections() - before) == 1

    # Callers at once never share a connection: every push lands.
    barrier = threading.Barrier(8, timeout=10)

    def publish(sender: int) -> list[Limited | None]:
        barrier.wait()
        return [limiter.take({}, "mail", f"{sender}-{n}") for n in range(50)]

    with ThreadPoolExecutor(8) as pool:
        answers = [answer for answers in pool.map(publish, range(8)) for answer in answers]
    assert answers == [None] * 400
    assert server.llen("mail") == 550
    assert len(connections() - before) <= 8


def test_broker_down_is_7005_and_nothing_queued(
    make_client: Callable[..., FlaskClient],
) -> None:
    client = make_client(broker_url="redis://127.0.0.1:1/0")
    status, entries, _ = post(client, {"events": [GOOD_EVENT]})
    assert (status, [e["code"] for e in entries]) == (503, ["7005"])
    assert "transid" not in entries[0]


def test_a_redis_connection_closed_while_idle_is_replaced_not_an_error(
    client: FlaskClient, broker: str
) -> None:
    assert post(client, {"events": [GOOD_EVENT]})[0] == 200
    # As after a Redis restart: the server closes the api's connection while it is idle. Only
    # this test's (its database's): another xdist worker's test may be mid-command on its own.
    server = redis.Redis.from_url(broker)
    database = int(broker.rsplit("/", 1)[1])
    killed = [entry["id"] for entry in server.client_list()
              if entry["name"] == "eventdesk-api" and int(entry["db"]) == database]
    assert killed
    for client_id in killed:
        server.client_kill_filter(_id=client_id)
    assert post(client, {"events": [GOOD_EVENT]})[0] == 200
    assert len(queued_messages(broker)) == 2


def test_database_down_on_a_cache_miss_is_7005(
    make_client: Callable[..., FlaskClient],
) -> None:
    client = make_client(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    status, entries, _ = post(client, {"events": [GOOD_EVENT]})
    assert (status, [e["code"] for e in entries]) == (503, ["7005"])


@pytest.mark.parametrize("failure", [BrokenPipeError, ValueError])  # ValueError: closed
def test_a_log_line_that_cannot_be_written_leaves_the_answer_as_it_is(
    client: FlaskClient, broker: str, monkeypatch: pytest.MonkeyPatch,
    failure: type[Exception],
) -> None:
    """The events are queued before the log line: its failure (stderr gone) is no 7005."""
    class Gone:
        def __getattr__(self, _: str) -> Callable[..., None]:
            def write(*_args: object, **_kwargs: object) -> None:
                raise failure

            return write

    monkeypatch.setattr(webex, "log", Gone())
    status, entries, _ = post(client, {"events": [GOOD_EVENT, {"evtid": ""}]})
    assert [entry["code"] for entry in entries] == ["1002", "7003"]
    assert status == 200
    assert len(queued_messages(broker)) == 1


def test_ready_while_the_broker_answers_even_with_the_database_down(
    make_client: Callable[..., FlaskClient],
) -> None:
    """A readiness probe takes the pod out of service: only for what stops the intake."""
    database_down = make_client(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    answer = database_down.get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "ready"
    assert answer.get_json()["database"].startswith("unreachable")
    with TcpProxy(5432) as proxy:  # a database that stops answering: reported within 1 s
        proxy.blackhole()
        hung = make_client(database_url=f"postgresql+psycopg://nobody@127.0.0.1:{proxy.port}/x")
        answer = hung.get("/readyz")
        assert answer.status_code == 200
        assert answer.get_json()["database"] == "no answer within 1 s"
    broker_down = make_client(broker_url="redis://127.0.0.1:1/0")
    answer = broker_down.get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json()["broker"].startswith("unreachable")


def test_message_carries_what_the_worker_needs(client: FlaskClient, broker: str) -> None:
    body = {"expiry": "2099-01-01T00:00:00", "notifyurl": "https://example.com/hook",
            "events": [{**GOOD_EVENT, "parameters": {"host": "db1", "count": 3, "ok": True}}]}
    status, _, _ = post(client, body)
    assert status == 200
    (batch,) = queued_messages(broker)
    assert batch["channel"] == "webex"
    assert batch["account_id"] == "wdc"
    assert batch["expiry"] == "2099-01-01T00:00:00Z"
    assert batch["notifyurl"] == "https://example.com/hook"
    assert batch["events"][0]["parameters"] == {"host": "db1", "count": "3", "ok": "true"}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),  # JSON's values
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=20,
)
BODIES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"events": JSON_VALUES}),
    st.fixed_dictionaries({"events": st.lists(st.fixed_dictionaries(
        {"evtid": JSON_VALUES}, optional={"parameters": JSON_VALUES, "correlationid": JSON_VALUES}
    ), max_size=3)}, optional={"expiry": JSON_VALUES, "notifyurl": JSON_VALUES}),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_no_input_gets_a_500(client: FlaskClient, body: Any) -> None:
    status, entries, _ = post(client, body)
    assert status in (200, 400), entries
    assert all(entry["code"] in {"1002", "7003", "7004", "7025"} for entry in entries)


def test_status_lookup_with_the_database_down_is_503(
    make_client: Callable[..., FlaskClient],
) -> None:
    client = make_client(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = client.get("/v1/transactions/0123", headers={"key": "demo-key"})
    assert response.status_code == 503
    assert "database" in response.get_json()["message"]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/transactions/0123"), ("GET", "/v1/deliveries"),
    ("POST", "/v1/transactions/0123/redeliver"),
])
@pytest.mark.parametrize("headers", [{}, {"key": "not-a-key"}, {"Authorization": "Bearer nope"}])
def test_status_and_delivery_endpoints_need_a_valid_key(
    client: FlaskClient, method: str, path: str, headers: dict[str, str]
) -> None:
    answer = client.open(path, method=method, headers=headers)
    assert (answer.status_code, answer.get_json()) == (401, {"message": "authentication failed"})


@pytest.mark.rabbitmq
def test_a_rabbitmq_that_stops_answering_is_an_error_in_seconds_then_a_new_connection(
    rabbitmq_url: str,
) -> None:
    """A publish waits at most PUBLISH_TIMEOUT for RabbitMQ's confirm (the api answers 7005,
    not a request held open), and the next one does not wait on the old connection."""
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    with TcpProxy(5672) as proxy:
        publisher = make_publisher(f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}", None,
                                   1000, 1000)

        def publish() -> Limited | None:  # a message of no batches: the worker acknowledges it
            return publisher.publish(task_message(EVENTS_PROCESS, EVENTS_QUEUE, "[]"), {})

        assert publish() is None
        proxy.blackhole()
        outcome: list[BaseException | Limited | None] = []

        def stalled() -> None:
            try:
                outcome.append(publish())
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=stalled, daemon=True)  # a hang must not hold the run
        thread.start()
        thread.join(PUBLISH_TIMEOUT + 10)
        assert outcome, "the publish still waits"
        assert isinstance(outcome[0], PublishError), outcome
        proxy.restore()
        assert publish() is None
        assert proxy.accepted == 2, "the next publish took the old connection"
