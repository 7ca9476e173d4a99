"""Query parameters as pydantic models, through the parsers event fields go through
(shared/requests/fields.py).

A route declares its model (api/operations.py) and reads its parameters with :func:`parse_query`;
the same model is the parameters' schema in ``/openapi.json``, so a maximum or a type cannot
differ between the two. A value the parsers refuse is a 400 naming the parameter (api/errors.py
answers :class:`BadQuery`), never a 500 from the database: a NUL in a text filter fails
PostgreSQL's statement, a year 10000 overflows, a 20-digit integer is no BIGINT.

Each type below validates with the parser's own rule (and message) and documents it with the
JSON schema keywords that say the same: a value the schema admits is a value the parser takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from flask import request
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    StringConstraints,
    ValidationError,
)
from pydantic_core import core_schema

from shared.requests.fields import (
    BLANK_PATTERN,
    EARLIEST,
    LATEST,
    MAX_ID,
    RANGE_MESSAGE,
    TEXT_PATTERN,
    check_text,
    parse_choice,
    parse_int,
    parse_timestamp,
)

Q = TypeVar("Q", bound=BaseModel)
# What parse_query reads as absent, for the document: an optional parameter takes it too.
BLANK = {"type": "string", "pattern": BLANK_PATTERN, "description": "Blank: as if absent."}


class BadQuery(Exception):
    pass


class Query(BaseModel):
    """A route's query parameters. Unknown parameters are ignored (a client's cache buster)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _raw(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    # A default is never a string: only what the caller sent goes through the parser.
    return lambda value: parse(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Whole:
    """ASCII digits from ``lowest`` to ``highest`` (shared.requests.fields.parse_int); with
    ``cap``, more than ``cap`` reads as ``cap`` (4me's ``per_page``)."""

    lowest: int
    highest: int = MAX_ID
    cap: int | None = None

    def parse(self, raw: str) -> int:
        number = parse_int(raw, self.lowest, self.highest)
        return number if self.cap is None else min(number, self.cap)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler
                                     ) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(
            _raw(self.parse), core_schema.int_schema(ge=self.lowest, le=self.highest))


@dataclass(frozen=True)
class Choice:
    """One of ``allowed`` (shared.requests.fields.parse_choice)."""

    allowed: Sequence[str]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler
                                     ) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(
            _raw(lambda raw: parse_choice(raw, self.allowed)),
            core_schema.literal_schema(list(self.allowed)))


Text = Annotated[str, StringConstraints(pattern=TEXT_PATTERN), BeforeValidator(_raw(check_text))]


def _since(raw: str) -> datetime:
    """Any RFC 3339 time. One past an end of the range every stored time lies in reads as that
    end: as a lower bound it selects the same rows, and refusing it would refuse a valid time
    (``0001-01-01T00:30:00+01:00`` is one, though it is no Python datetime in UTC)."""
    try:
        return parse_timestamp(raw)
    except ValueError as exc:
        if str(exc) != RANGE_MESSAGE:
            raise
    return EARLIEST if raw.startswith("0001-") else LATEST


Since = Annotated[datetime, BeforeValidator(_raw(_since))]


def _message(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    name = ".".join(str(part) for part in first["loc"])
    cause = first.get("ctx", {}).get("error")
    return f"{name} {cause if isinstance(cause, ValueError) else first['msg']}"


def parse_query(model: type[Q]) -> Q:
    """The request's query string as ``model``; a blank value is an absent one (its default).

    Raises BadQuery naming the first parameter at fault.
    """
    given = {name: value.strip() for name, value in request.args.items() if value.strip()}
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        raise BadQuery(_message(exc)) from None
