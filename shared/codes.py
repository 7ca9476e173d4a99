"""Webex Connect response codes and the HTTP status each one is answered with (DESIGN 3.1)."""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    QUEUED = "1002"
    INVALID_JSON = "7000"
    AUTH_FAILED = "7001"
    MANDATORY_MISSING = "7003"
    INVALID_VALUES = "7004"
    INTERNAL_ERROR = "7005"
    RATE_LIMITED = "7020"
    MANDATORY_CUSTOM_MISSING = "7025"
    INVALID_XML = "7027"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def http_status(self) -> int:
        return _STATUSES[self]


_DESCRIPTIONS = {
    Code.QUEUED: "Queued",
    Code.INVALID_JSON: "Invalid JSON",
    Code.AUTH_FAILED: "Authentication failed",
    Code.MANDATORY_MISSING: "Mandatory parameters missing",
    Code.INVALID_VALUES: "Invalid parameters/values",
    Code.INTERNAL_ERROR: "Internal error occurred",
    Code.RATE_LIMITED: "You have reached maximum transaction limit",
    Code.MANDATORY_CUSTOM_MISSING: "Mandatory custom parameters missing",
    Code.INVALID_XML: "Invalid XML",
}

_STATUSES = {
    Code.QUEUED: 200,
    Code.INVALID_JSON: 400,
    Code.AUTH_FAILED: 401,
    Code.MANDATORY_MISSING: 400,
    Code.INVALID_VALUES: 400,
    Code.INTERNAL_ERROR: 503,
    Code.RATE_LIMITED: 429,
    Code.MANDATORY_CUSTOM_MISSING: 400,
    Code.INVALID_XML: 400,
}


class IntakeError(Exception):
    """A request-level failure: answered with one entry and no transid."""

    def __init__(self, code: Code, detail: str | None = None) -> None:
        super().__init__(detail or code.description)
        self.code = code
        self.detail = detail
