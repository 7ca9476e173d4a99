"""Issue 10, "Done when": generated bodies posted to both event intakes on a real worker.

Whatever a body holds, no answer is a 5xx, and every event answered 1002 or 202 ends
``completed`` or ``expired``, never ``failed``: a value the intake accepted is one the worker
can act on. The values are drawn near the edges the parsers draw (ids around BIGINT, other
scripts' digits, times at the ends of the range and with offsets, control characters, blanks).
A private Redis, a throwaway PostgreSQL database with the demo records, a Celery worker
subprocess; the api in-process. Derandomized, so a CI run draws the same bodies each time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from api import create_app
from shared.db.engine import session_scope
from shared.db.models import Transaction
from shared.requests.fields import CHOICES, MAX_ID
from tests.conftest import Worker, load_demo, throwaway_database, wait_until
from tests.resilience.harness import FINISHED, WEBEX_PATH, private_redis, service_env

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

FOURME_HEADERS = {"Authorization": "Bearer demo-key", "X-4me-Account": "wdc"}

ids = st.one_of(
    st.integers(0, MAX_ID).map(str), st.integers(MAX_ID + 1, 2**70).map(str),
    st.sampled_from(["³", "²", "٣", "\uff11", "", " 7 ", "-1", "1.5", "0"]), st.integers(0, 99),
)
times = st.one_of(
    st.datetimes().map(lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S")),
    st.sampled_from([
        "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "9999-12-30T23:59:59Z",
        "0001-01-02T00:00Z", "2026-02-30T00:00", "2026-01-01T24:00", "\uff12026-01-01T00:00",
    ]),
)
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "   ", "\x00", "a\tb", "x" * 300]))
numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none())
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "subject": texts, "note": texts, "source": texts, "sourceID": texts, "ci": texts,
    "team": texts, "requested_for": texts,
    **{name: st.one_of(st.sampled_from(CHOICES[name]), texts) for name in CHOICES},
    **dict.fromkeys(("requested_by_id", "ci_id", "team_id", "member_id"), ids),
    **dict.fromkeys(("waiting_until", "downtime_start_at"), times),
}


@st.composite
def fields(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=5, unique=True))
    values = {name: draw(st.one_of(FIELD_VALUES[name], numbers)) for name in names}
    return {"subject": draw(texts), **values} if draw(st.booleans()) else values


webex_events = st.fixed_dictionaries(
    {"evtid": st.sampled_from(["server-down", "no-such-event", "", " "])},
    optional={"correlationid": st.one_of(texts, st.none()),
              "parameters": st.one_of(st.none(), fields().map(
                  lambda given: {"host": "db1", **given}))},
)
webex_bodies = st.fixed_dictionaries(
    {"events": st.lists(webex_events, min_size=1, max_size=3)},
    optional={"expiry": st.one_of(times, st.none(), st.just("2099-01-01T00:00:00Z"))},
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("property")
    with private_redis(folder / "redis", aof=False) as redis_server, \
            throwaway_database("eventdesk_property") as database:
        load_demo(database)
        env = service_env(redis_server.url, database)
        worker = Worker(env, folder / "worker.log")
        try:
            yield env
        finally:
            worker.stop()


def test_what_intake_accepts_the_worker_completes(
    stack: dict[str, str], configure: Callable[..., None]
) -> None:
    configure(**{name.removeprefix("EVENTDESK_").lower(): value for name, value in stack.items()})
    client: FlaskClient = create_app().test_client()
    accepted: list[str] = []

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.one_of(webex_bodies.map(lambda body: ("webex", body)),
                     fields().map(lambda body: ("4me", body))))
    def post(case: tuple[str, dict[str, Any]]) -> None:
        channel, body = case
        if channel == "webex":
            response = client.post(WEBEX_PATH, data=json.dumps(body), headers={
                "key": "demo-key", "Content-Type": "application/json"})
            assert response.status_code < 500, response.get_json()
            accepted.extend(entry["transid"] for entry in response.get_json()["response"]
                            if entry["code"] == "1002")
        else:
            response = client.post("/v1/events", data=json.dumps(body), headers={
                **FOURME_HEADERS, "Content-Type": "application/json"})
            assert response.status_code < 500, response.get_json()
            if response.status_code == 202:
                accepted.append(response.get_json()["transid"])

    post()
    assert accepted, "no generated body was accepted: the strategies drift from the rules"

    def outcomes() -> dict[str, tuple[str, str | None]] | None:
        with session_scope(stack["EVENTDESK_DATABASE_URL"]) as session:
            rows = session.execute(select(Transaction.transid, Transaction.status,
                                          Transaction.error)
                                   .where(Transaction.transid.in_(accepted))).all()
        done = {transid: (status, error) for transid, status, error in rows
                if status in FINISHED}
        return done if len(done) == len(accepted) else None

    finished = wait_until(outcomes, timeout=120, interval=0.5)
    failed = {transid: error for transid, (status, error) in finished.items()
              if status == "failed"}
    assert failed == {}
