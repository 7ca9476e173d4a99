"""The Webex Connect Custom Event payload: JSON or XML in, validated events out.

The pydantic models here validate requests and also generate the OpenAPI document, so the two
cannot drift. Validation is split the way the answer is: request-level faults (bad JSON, no
``events``, a bad ``expiry`` or ``notifyurl``) answer with one entry; a fault in one event
(no ``evtid``, a long ``correlationid``) answers that event's entry and lets the others queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any
from xml.etree.ElementTree import Element, ParseError

import pydantic_core
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as parse_xml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from shared.codes import Code, IntakeError
from shared.notify.urls import check_syntax
from shared.requests.fields import (
    NOT_BLANK_PATTERN,
    TEXT_PATTERN,
    blank,
    check_text,
    number_text,
    parse_timestamp,
)

MAX_CORRELATIONID_BYTES = 50
# The XML body's element names (load_xml), also in the OpenAPI document's XML schema.
XML_ROOT = "request"
XML_EVENT = "event"

ParamValue = str | int | float | bool | None
ParamName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


def parse_expiry(value: Any) -> datetime | None:
    """UTC ISO 8601, with or without ``Z`` and milliseconds; a time without a zone is UTC; in
    the range every time must lie in (shared.requests.fields.parse_timestamp)."""
    if blank(value):
        return None
    if not isinstance(value, str):
        raise ValueError("expiry must be an ISO 8601 string")
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise ValueError(f"expiry {exc}") from None


def _absent_as_empty(value: Any) -> Any:
    # "parameters": null means no parameters, like a missing member (docs/api.md "Values").
    return {} if value is None else value


def check_notify_url(value: Any) -> str | None:
    """The body's ``notifyurl``: absent, or a URL that can exist (``shared.notify.urls``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("notifyurl must be an http(s) URL")
    return check_syntax(check_text(value))


class WebexEvent(BaseModel):
    """One event: which event definition to run, and its parameters."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"xml": {"name": XML_EVENT}})

    evtid: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
        AfterValidator(check_text),
    ] = Field(description="The event definition's id.",
              json_schema_extra={"pattern": NOT_BLANK_PATTERN})
    correlationid: Annotated[str, AfterValidator(check_text)] | None = Field(
        default=None, description="Caller's id for this event, at most 50 bytes (UTF-8).",
        json_schema_extra={"pattern": TEXT_PATTERN},
    )
    parameters: Annotated[dict[ParamName, ParamValue], BeforeValidator(_absent_as_empty)] = Field(
        default_factory=dict, description="Name/value pairs for the event definition; names "
        "and text values without control characters (but tab, CR and LF)."
    )

    @field_validator("correlationid")
    @classmethod
    def _correlationid_length(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > MAX_CORRELATIONID_BYTES:
            raise ValueError("correlationid is longer than 50 bytes")
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters_as_text(cls, value: dict[str, ParamValue]) -> dict[str, ParamValue]:
        # The 4me fields the parameters feed are text; a monitoring tool's 42 means "42".
        texts: dict[str, ParamValue] = {}
        for name, v in value.items():
            try:
                check_text(name)
                if isinstance(v, str):
                    check_text(v)
                texts[name] = ("true" if v else "false") if isinstance(v, bool) else \
                    (number_text(v) if isinstance(v, int | float) else v)
            except ValueError as exc:
                raise ValueError(f"parameter {name!r} {exc}") from exc
        return texts

    def text_parameters(self) -> dict[str, str | None]:
        return {k: (None if v is None else str(v)) for k, v in self.parameters.items()}


class WebexEventRequest(BaseModel):
    """``POST /resources/v1/events/externalevent/``; as XML, ``<request>`` with the same
    members as elements, each event an ``<event>`` in ``<events>``."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"xml": {"name": XML_ROOT}})

    expiry: Annotated[datetime | None, BeforeValidator(parse_expiry)] = Field(
        default=None, description="UTC ISO 8601; after it the event is not acted on."
    )
    notifyurl: Annotated[str | None, BeforeValidator(check_notify_url)] = Field(
        default=None, description="http(s) URL that receives the outcome of each event."
    )
    events: list[WebexEvent] = Field(min_length=1, json_schema_extra={"xml": {"wrapped": True}})


class WebexResponseEntry(BaseModel):
    code: Code = Field(examples=["1002"])
    description: str = Field(examples=["Queued"])
    transid: str | None = None
    correlationid: str | None = None
    detail: str | None = Field(default=None, description="What was wrong, for a refusal.")


class WebexResponse(BaseModel):
    response: list[WebexResponseEntry]


def entry(
    code: Code, *, transid: str | None = None, correlationid: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """One response entry; ``detail`` says what was wrong, the description stays the seed's."""
    item: dict[str, Any] = {"code": code.value, "description": code.description}
    if transid is not None:
        item["transid"] = transid
    if correlationid is not None:
        item["correlationid"] = correlationid
    if detail is not None:
        item["detail"] = detail
    return item


def load_json(body: bytes) -> Any:
    try:
        return pydantic_core.from_json(body, allow_inf_nan=False)  # NaN and Infinity: no JSON
    except ValueError as exc:
        raise IntakeError(Code.INVALID_JSON) from exc


def _xml_text(element: Element | None) -> str | None:
    if element is None:
        return None
    text = (element.text or "").strip()
    return text or None


def _children(element: Element | None) -> list[Element]:
    return [] if element is None else list(element)


def _xml_event(event: Element) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "evtid": _xml_text(event.find("evtid")),
        "correlationid": _xml_text(event.find("correlationid")),
        "parameters": {
            param.tag: (param.text or "") for param in _children(event.find("parameters"))
        },
    }
    return {name: value for name, value in fields.items() if value is not None}


def load_xml(body: bytes) -> dict[str, Any]:
    """``<request><expiry/><notifyurl/><events><event>...`` to the JSON body's shape."""
    try:
        root = parse_xml(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise IntakeError(Code.INVALID_XML) from exc
    if root.tag != XML_ROOT:
        raise IntakeError(Code.INVALID_XML, f"the root element must be <{XML_ROOT}>")
    data: dict[str, Any] = {"expiry": _xml_text(root.find("expiry")),
                            "notifyurl": _xml_text(root.find("notifyurl"))}
    events = root.find("events")
    if events is not None:
        data["events"] = [_xml_event(event) for event in events.findall(XML_EVENT)]
    return {k: v for k, v in data.items() if v is not None}


def _event_code(error: ValidationError) -> Code:
    # A blank evtid ("", "  ") is as missing as none at all: 7003 for each.
    missing = any(
        e["loc"][:1] == ("evtid",) and (e["type"] == "missing" or blank(e["input"]))
        for e in error.errors()
    )
    return Code.MANDATORY_MISSING if missing else Code.INVALID_VALUES


def _message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


class ParsedRequest(BaseModel):
    """A request whose envelope is valid; each event is a WebexEvent or the entry answering it."""

    expiry: datetime | None
    notifyurl: str | None
    events: list[WebexEvent | dict[str, Any]]


def validate(data: Any, max_events: int) -> ParsedRequest:
    """Validate a loaded body. Raises IntakeError for request-level faults."""
    if not isinstance(data, dict):
        raise IntakeError(Code.INVALID_VALUES, "the body must be an object")
    events = data.get("events")
    if not events:
        raise IntakeError(Code.MANDATORY_MISSING, "events is missing or empty")
    if not isinstance(events, list):
        raise IntakeError(Code.INVALID_VALUES, "events must be an array")
    if len(events) > max_events:
        raise IntakeError(Code.INVALID_VALUES, f"at most {max_events} events per request")
    try:
        request = WebexEventRequest.model_validate(data)
    except ValidationError:
        pass
    else:
        return ParsedRequest(
            expiry=request.expiry, notifyurl=request.notifyurl, events=list(request.events)
        )
    # Something is wrong: find out whether it is the envelope or which events.
    try:
        envelope = WebexEventRequest.model_validate({**data, "events": [{"evtid": "x"}]})
    except ValidationError as exc:
        raise IntakeError(Code.INVALID_VALUES, _message(exc)) from exc
    checked: list[WebexEvent | dict[str, Any]] = []
    for raw in events:
        try:
            checked.append(WebexEvent.model_validate(raw))
        except ValidationError as exc:
            correlationid = raw.get("correlationid") if isinstance(raw, dict) else None
            # Echoed back only when it is itself valid: not too long, no control characters.
            echo = isinstance(correlationid, str) and not any(
                error["loc"][:1] == ("correlationid",) for error in exc.errors()
            )
            checked.append(entry(
                _event_code(exc),
                correlationid=correlationid if echo else None,
                detail=_message(exc),
            ))
    return ParsedRequest(expiry=envelope.expiry, notifyurl=envelope.notifyurl, events=checked)


def missing_mandatory(
    mandatory: list[str], defaults: Mapping[str, Any], parameters: Mapping[str, Any]
) -> list[str]:
    """Mandatory custom parameters left blank by the event (absent, null, only whitespace),
    with no default in the definition."""
    return [
        name for name in mandatory if blank(parameters.get(name)) and blank(defaults.get(name))
    ]
