"""The 4me Events API fields (DESIGN 3.2): names, allowed values, lengths, formats.

Pure functions shared by every front door: the Webex intake validates the fields an event
definition produces, the 4me Events API validates its parameters, and the worker checks again
before it writes, so a value that passes the front door is a value the worker can store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

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

# [0-9], not \d: \d also matches other scripts' digits, which int() and fromisoformat() refuse.
_DATETIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2})?Z?$")
# The largest value of a BIGINT (PostgreSQL) and of an INTEGER (SQLite): every id column.
MAX_ID = 2**63 - 1
# A day inside Python's datetime range at each end: an instant in it can be shown in any time
# zone (a database session's, a caller's) without overflowing, and PostgreSQL's timestamptz
# and SQLite's text hold it.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
_NAIVE_EARLIEST, _NAIVE_LATEST = EARLIEST.replace(tzinfo=None), LATEST.replace(tzinfo=None)
RANGE_MESSAGE = "must lie between 0001-01-02T00:00:00Z and 9999-12-30T23:59:59Z"
_MAX_REFERENCE = 255
# C0 control characters but tab, LF and CR.
_CONTROLS = r"\x00-\x08\x0b\x0c\x0e-\x1f"
_CONTROL = re.compile(f"[{_CONTROLS}]")
# The same rules as JSON schema patterns, for the OpenAPI document (api/openapi.py): text
# check_text takes; text that is blank (only the characters of str.isspace, which strip()
# removes); text check_text takes with something left once stripped.
TEXT_PATTERN = f"^[^{_CONTROLS}]*$"
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
BLANK_PATTERN = f"^[{_SPACE}]*$"
NOT_BLANK_PATTERN = f"^[^{_CONTROLS}]*[^{_SPACE}{_CONTROLS}][^{_CONTROLS}]*$"
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
    # isprintable() is true for most text and costs less than the search (intake hot path).
    if not value.isprintable() and _CONTROL.search(value):
        raise ValueError(CONTROL_MESSAGE)
    return value


def number_text(value: int | float) -> str:
    """A JSON number as the text of a field, the rule of both event intakes; raises ValueError
    for a float beyond the double's range (JSON's ``1e400`` reads as infinity). (The JSON
    parser refuses an int too long to be text: invalid JSON.)"""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("is a number too large to be read")
    return str(value)


def blank(value: object) -> bool:
    """Not given: None, or text of only whitespace (``""``, ``"  "``), for every optional and
    mandatory value of both intakes alike."""
    return value is None or (isinstance(value, str) and not value.strip())


# The parsers below are the only ones intake and worker use for ids, numbers, datetimes and
# choices: a value one of them lets in at the door is a value the worker can act on. Each
# raises ValueError with a message fit for the caller.

def parse_int(value: str, lowest: int = 0, highest: int = MAX_ID) -> int:
    """A whole number in ASCII digits (no sign, space or ``_``: ``str.isdigit()`` and ``int()``
    take ``"³"``, ``"٣"`` or ``" 1_0 "``), from ``lowest`` to ``highest``."""
    # The length check first: int() of thousands of digits is slow, and refused past 4300.
    if not (value.isascii() and value.isdigit()) or len(value.lstrip("0")) > len(str(highest)):
        raise ValueError(f"must be a whole number from {lowest} to {highest}")
    number = int(value)
    if not lowest <= number <= highest:
        raise ValueError(f"must be a whole number from {lowest} to {highest}")
    return number


def parse_id(value: str) -> int:
    """A record id: ASCII digits, at most :data:`MAX_ID` (the id columns' type)."""
    try:
        return parse_int(value)
    except ValueError:
        raise ValueError(f"must be a numeric id (ASCII digits, at most {MAX_ID})") from None


def parse_choice(value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}")
    return value


def _in_range(moment: datetime) -> datetime:
    if not EARLIEST <= moment <= LATEST:
        raise ValueError(RANGE_MESSAGE)
    return moment


def parse_datetime(value: str) -> datetime:
    """A 4me event field's time, ``yyyy-mm-ddThh:mm[:ss][Z]``, always UTC, in range."""
    if not _DATETIME.match(value):
        raise ValueError("expected yyyy-mm-ddThh:mm[:ss][Z]")
    return _in_range(datetime.fromisoformat(value.rstrip("Z")).replace(tzinfo=UTC))


def parse_timestamp(value: str) -> datetime:
    """Any ISO 8601 time (``expiry``, ``updated_since``): a time without a zone is UTC; the
    result is UTC and in range. ``9999-12-31T23:59:59-05:00`` is past the range, not an
    overflow: the offset is applied with the range check, never by ``astimezone``."""
    if not value.isascii():
        raise ValueError("expected an ISO 8601 time, such as 2026-12-01T18:51:19Z")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError("expected an ISO 8601 time, such as 2026-12-01T18:51:19Z") from None
    offset = parsed.utcoffset() or timedelta()
    local = parsed.replace(tzinfo=None)
    # The bounds are shifted by the offset, not the time: a bound a day inside the range
    # cannot overflow, and the time, once known to be inside, can be shifted too.
    if not _NAIVE_EARLIEST + offset <= local <= _NAIVE_LATEST + offset:
        raise ValueError(RANGE_MESSAGE)
    return (local - offset).replace(tzinfo=UTC)


def _field_error(name: str, value: str) -> str | None:
    if name in TEXT_FIELDS:
        limit = TEXT_FIELDS[name]
        size = len(value.encode()) if name in ("note", "internal_note") else len(value)
        return f"is longer than {limit}" if size > limit else None
    try:
        if name in CHOICES:
            parse_choice(value, CHOICES[name])
        elif name in ID_FIELDS:
            parse_id(value)
        elif name in DATETIME_FIELDS:
            parse_datetime(value)
        else:
            return f"is longer than {_MAX_REFERENCE}" if len(value) > _MAX_REFERENCE else None
    except ValueError as exc:
        return str(exc)
    return None


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

