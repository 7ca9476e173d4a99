"""The 4me Events API's wire models: its answers, and its parameters for the OpenAPI document
(validation is check_fields's; tests/test_fourme_api.py checks that the two agree)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, create_model

from shared.requests.fields import (
    CHOICES,
    DATETIME_FIELDS,
    FIELDS,
    ID_FIELDS,
    MAX_ID,
    RANGE_MESSAGE,
    TEXT_FIELDS,
    TEXT_PATTERN,
)


class FourMeFieldError(BaseModel):
    field: str = Field(examples=["category"])
    message: str = Field(examples=["must be one of incident, rfc, rfi, ..."])


class FourMeError(BaseModel):
    """Every error answer of the 4me Events API; ``errors`` only with 422 Validation failed."""

    message: str = Field(examples=["Validation failed"])
    errors: list[FourMeFieldError] | None = None


class FourMeQueued(BaseModel):
    """``202 Accepted``: the broker holds the event; its state is at the ``Location``."""

    transid: str
    status: Literal["queued"] = "queued"


_ID = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,19}$")] \
    | Annotated[int, Strict(), Field(ge=0, le=MAX_ID)]
_DATETIME = Annotated[
    str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2})?Z?$")]


def _parameter(name: str) -> tuple[Any, Any]:
    """The schema of one event field, from the same tables check_fields validates with."""
    if name in TEXT_FIELDS:
        limit = TEXT_FIELDS[name]
        unit = "bytes (UTF-8)" if name in ("note", "internal_note") else "characters"
        return str | None, Field(default=None, max_length=limit, pattern=TEXT_PATTERN,
                                 description=f"At most {limit} {unit}.")
    if name in CHOICES:
        return Literal[CHOICES[name]] | None, None
    if name in ID_FIELDS:
        return _ID | None, Field(default=None, description=f"A record id (text or a number), "
                                                           f"at most {MAX_ID}.")
    if name in DATETIME_FIELDS:
        return _DATETIME | None, Field(default=None, description=f"UTC, yyyy-mm-ddThh:mm[:ss][Z]; "
                                                                 f"it {RANGE_MESSAGE}.")
    return str | None, Field(default=None, max_length=255, pattern=TEXT_PATTERN,
                             description="A record's name, label, email or sourceID.")


# The parameters of POST /v1/events, for the OpenAPI document. Validation is check_fields's
# (tests/test_fourme_api.py checks that the two agree); unknown parameters are refused.
FourMeEventParameters: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "FourMeEventParameters",
    __config__=ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [{"required": ["subject"]}, {"required": ["template_id"]}]}),
    __doc__="The 4me event fields. `subject` is required unless `template_id` is given; an "
            "empty value means not given.",
    **{name: _parameter(name) for name in sorted(FIELDS)},
)
