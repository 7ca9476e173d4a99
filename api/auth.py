"""Who is calling: a Webex ``key`` header or a 4me ``Authorization: Bearer`` token."""

from __future__ import annotations

from flask import current_app, request

from shared.intake.codes import IntakeError
from shared.intake.service import KeyInfo, WebexIntake


def caller() -> KeyInfo | None:
    """The caller's key, or None when no valid key or token was given."""
    token = request.headers.get("key")
    if token is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    intake: WebexIntake = current_app.extensions["eventdesk.webex"]
    try:
        return intake.authenticate(token)
    except IntakeError:
        return None
