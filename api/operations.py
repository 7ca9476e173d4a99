"""The declarations routes are served, validated and documented by (``/openapi.json`` is built
from them in api/openapi.py).

Each route declares an :class:`Operation`: its path parameters, query parameters and bodies as
pydantic models, its headers, its security, and its answers. :func:`route` registers the Flask
rule from that declaration (an integer path parameter's converter takes its maximum from the
model) and the view reads its query string with ``OPERATION.args()``, through the same model.
A maximum, a type or a required parameter therefore has one source.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic

from flask import Blueprint, Response
from pydantic import BaseModel, Field
from typing_extensions import TypeVar

from api.query import Query, parse_query

# An operation without a query string reads none: Query, the empty model.
Q = TypeVar("Q", bound=Query, default=Query)
View = TypeVar("View", bound=Callable[..., Response])
_PARAMETER = re.compile(r"\{(\w+)\}")
SECURITY = {
    "key": {"type": "apiKey", "in": "header", "name": "key",
            "description": "An API key of the account (the Webex Connect `key` header)."},
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "The same API key as a bearer token (4me's way)."},
}
# Either scheme: the routes that read with a key (api/auth.py).
KEY_OR_BEARER = ("key", "bearer")


class Message(BaseModel):
    """An error outside the intakes' own shapes (api/errors.py)."""

    message: str


class Transid(BaseModel):
    """The path of a transaction's routes."""

    transid: str = Field(description="As the intake answered it.")


@dataclass(frozen=True)
class Header:
    name: str
    description: str
    required: bool = False
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Answer:
    """One documented answer: its body (a model, ``list[Model]``, or a JSON schema) by media
    type, and the names of the headers it carries."""

    description: str
    body: Any = None
    media: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation(Generic[Q]):
    """What one route takes and answers; the single source of its validation and its schema."""

    method: str
    path: str
    summary: str
    responses: Mapping[int | str, Answer]
    description: str = ""
    security: tuple[str, ...] = ()
    query: type[Q] | None = None
    params: type[BaseModel] | None = None
    headers: tuple[Header, ...] = ()
    body: Mapping[str, Any] = field(default_factory=dict)
    body_required: bool = False

    def args(self) -> Q:
        """The request's query string, validated by the declared model (400 when refused)."""
        assert self.query is not None, f"{self.method} {self.path} declares no query"
        return parse_query(self.query)

    def rule(self) -> str:
        """The Flask rule: ``{id}`` becomes ``<int(max=...):id>`` for an integer parameter."""
        properties = self.params.model_json_schema()["properties"] if self.params else {}

        def converter(match: re.Match[str]) -> str:
            name = match.group(1)
            schema = properties[name]
            if schema.get("type") == "integer":
                assert schema.get("minimum") == 0, "the int converter takes no sign"
                return f"<int(max={schema['maximum']}):{name}>"
            return f"<{name}>"

        return _PARAMETER.sub(converter, self.path)


# Every route's operation, as its module is imported (the Webex intake's is api/webex.WEBEX).
OPERATIONS: list[Operation[Any]] = []


def route(blueprint: Blueprint, operation: Operation[Any]) -> Callable[[View], View]:
    """Serve the decorated view at the operation's path and document it."""

    def register(view: View) -> View:
        blueprint.add_url_rule(operation.rule(), view_func=view, methods=[operation.method])
        OPERATIONS.append(operation)
        return view

    return register
