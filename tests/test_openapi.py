"""Schemathesis over ``/openapi.json``: every operation, every check, on PostgreSQL with the Redis
broker, with the demo account's key, so the authenticated paths run too.

The api runs in process (schemathesis calls the WSGI app: the Webex front door and Flask behind
it, as gunicorn would). The schema is loaded when the module is collected, so that each operation
is a test of its own; the app is built per test, on the test's database and broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings

from api.openapi import document
from shared.codes import Code

EXAMPLES = 200
CONFIG = schemathesis.Config.from_dict({
    "auth": {"openapi": {"key": {"api_key": "demo-key"}, "bearer": {"bearer": "demo-key"}}},
    "generation": {"max-examples": EXAMPLES},
    "operations": [
        # A valid request can still be refused for what no schema can say: an evtid of no event
        # definition (7004), a definition's mandatory parameter (7025); a 4me date that does not
        # exist or lies past the range (422); a recipient, which is a query parameter or a
        # header (400). webex_reads_what_the_schema_allows keeps the Webex ones to those.
        {"include-name": ["POST /resources/v1/events/externalevent/", "POST /v1/events",
                          "POST /v1/mail"],
         "checks": {"positive_data_acceptance": {
             "expected-statuses": ["2xx", 400, 401, 404, 409, 422, 429, "5xx"]}}},
    ],
})


class Live:
    """The WSGI app schemathesis calls: the api of the running test (``api`` fixture)."""

    app: Callable[..., Iterable[bytes]] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        assert self.app is not None, "no api: the test must use the api fixture"
        return self.app(environ, start_response)


LIVE = Live()
SCHEMA = schemathesis.openapi.from_dict(document(), config=CONFIG)
SCHEMA.app = LIVE


@schemathesis.serializer("message/rfc822")
def raw_message(_: Any, value: Any) -> bytes:
    # The Mail API stores the raw bytes as they came (any bytes are a message to it).
    return value if isinstance(value, bytes) else str(value).encode()


# The codes of a body the intake could not read: never the answer to a body the schema allows.
UNREADABLE = {Code.INVALID_JSON, Code.INVALID_XML, Code.MANDATORY_MISSING}


@schemathesis.check
def webex_reads_what_the_schema_allows(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any],
) -> bool | None:
    if case.path != "/resources/v1/events/externalevent/" or case.meta is None \
            or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    codes = {entry["code"] for entry in response.json()["response"]}
    assert not codes & UNREADABLE, f"a body of the documented shape refused: {response.text}"
    return True


@pytest.fixture
def api(configure: Callable[..., None], postgres_url: str, broker: str) -> Iterator[None]:
    from api import create_app

    # No worker runs here: a Prefer: wait would wait its full N seconds for nothing.
    configure(database_url=postgres_url, broker_url=broker, max_waiters_per_process=0)
    LIVE.app = create_app()
    yield
    LIVE.app = None


@pytest.mark.redis
@pytest.mark.postgres
@SCHEMA.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_the_api_answers_as_documented(case: schemathesis.Case[Any], api: None) -> None:
    case.call_and_validate()


@pytest.mark.redis
def test_the_served_document_is_the_generated_one(client: FlaskClient) -> None:
    assert client.get("/openapi.json").get_json() == document()
