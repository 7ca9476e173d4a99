"""The 4me Events API fields (DESIGN 3.2): names, allowed values, lengths, formats.

Pure functions shared by every front door: the Webex intake validates the fields an event
definition produces, the 4me Events API validates its parameters, and the worker checks again
before it writes, so a value that passes the front door is a value the worker can store.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

TEXT_FIELDS = {
    "source": 30, "sourceID": 128, "subject": 255, "note": 65536, "internal_note": 65536,
    "supplier_requestID": 128, "support_domain": 64,
}
REFERENCE_FIELDS = (
    "requested_by", "requested_for", "member", "team", "service_instance", "ci", "ci_source",
    "ci_sourceID", "supplier",
)
ID_FIELDS = (
    "requested_by_id", "requested_for_id", "member_id", "team_id", "service_instance_id",
    "ci_id", "template_id", "supplier_id", "problem_id", "workflow_id",
)
DATETIME_FIELDS = ("desired_completion_at", "downtime_start_at", "downtime_end_at", "waiting_until")
CHOICES = {
    "category": (
        "incident", "rfc", "rfi", "complaint", "compliment", "other", "order", "fulfillment",
        "reservation",
    ),
    "impact": ("low", "medium", "high", "top"),
    "status": (
        "declined", "on_backlog", "assigned", "accepted", "in_progress", "waiting_for",
        "waiting_for_customer", "reservation_pending", "workflow_pending", "project_pending",
        "completed",
    ),
    "completion_reason": (
        "solved", "workaround", "gone", "duplicate", "withdrawn", "no_reply", "rejected",
        "conflict", "declined", "unsolvable",
    ),
}
FIELDS = frozenset(
    [*TEXT_FIELDS, *REFERENCE_FIELDS, *ID_FIELDS, *DATETIME_FIELDS, *CHOICES]
)

_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?Z?$")
_MAX_REFERENCE = 255
# C0 control characters but tab, LF and CR.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
CONTROL_MESSAGE = "must not contain control characters (U+0000 to U+001F but tab, CR and LF)"


class FieldErrors(Exception):
    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))
        self.errors = errors


def check_text(value: str) -> str:
    """The rule for every text a front door accepts (each field of both event intakes: evtid,
    correlationid, notifyurl, parameter names and values, every 4me event field): no C0 control
    character but tab, CR and LF; raises ValueError (answered 7004, or 422 on the 4me API).

    PostgreSQL text cannot hold a NUL, so an event carrying one could never be stored, and the
    other control characters are no text a request or a notification needs; refusing them all
    at the door keeps SQLite and PostgreSQL deployments answering alike. Returns ``value``.
    """
    # isprintable() is true for most text and costs a third of the search (intake hot path).
    if not value.isprintable() and _CONTROL.search(value):
        raise ValueError(CONTROL_MESSAGE)
    return value


def parse_datetime(value: str) -> datetime:
    """``yyyy-mm-ddThh:mm[:ss][Z]``, always UTC."""
    if not _DATETIME.match(value):
        raise ValueError("expected yyyy-mm-ddThh:mm[:ss][Z]")
    return datetime.fromisoformat(value.rstrip("Z")).replace(tzinfo=UTC)


def _field_error(name: str, value: str) -> str | None:
    if name in TEXT_FIELDS:
        limit = TEXT_FIELDS[name]
        size = len(value.encode()) if name in ("note", "internal_note") else len(value)
        return f"is longer than {limit}" if size > limit else None
    if name in CHOICES:
        allowed = CHOICES[name]
        return None if value in allowed else f"must be one of {', '.join(allowed)}"
    if name in ID_FIELDS:
        return None if value.isdigit() and len(value) <= 18 else "must be a numeric id"
    if name in DATETIME_FIELDS:
        try:
            parse_datetime(value)
        except ValueError as exc:
            return str(exc)
        return None
    return f"is longer than {_MAX_REFERENCE}" if len(value) > _MAX_REFERENCE else None


def check_fields(fields: dict[str, str | None]) -> dict[str, str | None]:
    """Validate 4me event fields; returns them stripped, raises FieldErrors naming each fault.

    An empty value stays in the result as None: for a reference it means "not given" (so the
    default applies), which is how the seed's ``"requested_for": ""`` example reads.
    """
    clean: dict[str, str | None] = {}
    errors: list[tuple[str, str]] = []
    for name, raw in fields.items():
        if name not in FIELDS:
            continue
        value = raw.strip() if isinstance(raw, str) else raw
        if not value:
            clean[name] = None
            continue
        problem = _field_error(name, value)
        if problem:
            errors.append((name, problem))
        clean[name] = value
    if errors:
        raise FieldErrors(errors)
    return clean


def event_fields(
    parameters: dict[str, Any], defaults: dict[str, Any], mapping: dict[str, Any]
) -> dict[str, str | None]:
    """An event definition applied to a Webex event's parameters: the 4me fields it sets.

    Defaults fill parameters the event leaves empty; ``mapping`` renames a parameter to a field
    (``{"host": "ci"}``); parameters that are neither a field nor mapped stay custom parameters
    on the transaction only.
    """
    merged = {**defaults}
    merged.update({k: v for k, v in parameters.items() if v not in (None, "")})
    fields: dict[str, str | None] = {}
    for name, value in merged.items():
        target = mapping.get(name, name)
        if target in FIELDS:
            fields[target] = None if value is None else str(value)
    return fields


def check_definition(defaults: dict[str, Any], mapping: dict[str, Any]) -> list[tuple[str, str]]:
    """What in an event definition would fail every event that uses it, by the rules the
    intake and the worker apply (:func:`event_fields`, :func:`check_fields`): a mapping onto a
    name that is no 4me field (the parameter would be dropped), a default that is not a text,
    number or boolean, or one that check_text or the field's own check refuses. Each fault as
    (``defaults.<name>`` or ``mapping.<name>``, problem).
    """
    errors: list[tuple[str, str]] = []
    usable: dict[str, Any] = {}
    for name, target in mapping.items():
        if isinstance(target, str) and target in FIELDS:
            usable[name] = target
        else:
            errors.append((f"mapping.{name}", f"{target!r} is not a 4me event field"))
    texts: dict[str, Any] = {}
    for name, value in defaults.items():
        if value is not None and not isinstance(value, str | int | float | bool):
            errors.append((f"defaults.{name}", "must be text, a number, a boolean or null"))
            continue
        try:
            texts[name] = check_text(value) if isinstance(value, str) else value
        except ValueError as exc:
            errors.append((f"defaults.{name}", str(exc)))
    by_field = {usable.get(name, name): name for name in texts}
    try:
        check_fields(event_fields({}, texts, usable))
    except FieldErrors as exc:
        errors.extend((f"defaults.{by_field[field]}", problem) for field, problem in exc.errors)
    return errors
