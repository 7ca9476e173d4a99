"""Who is calling: a Webex ``key`` header or a 4me ``Authorization: Bearer`` token."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec

from flask import Response, current_app, request

from api.errors import error_json
from api.fourme import respond
from shared.intake.fourme.service import Refused, bearer_token, check_account
from shared.records.keys import KeyInfo, Keys

P = ParamSpec("P")
KeyedView = Callable[Concatenate[KeyInfo, P], Response]


def caller() -> KeyInfo | None:
    """The caller's key, or None when no valid key or token was given."""
    token = request.headers.get("key")
    if token is None:
        token = bearer_token(request.headers.get("Authorization"))
    keys: Keys = current_app.extensions["eventdesk.keys"]
    return keys.authenticate(token)


def requires_key(
    refusal: str = "authentication failed",
) -> Callable[[KeyedView[P]], Callable[P, Response]]:
    """A view decorator: the view gets the caller's key first; without a valid one, or with an
    ``X-4me-Account`` header naming another account than the key's, a 401 (the rule of
    ``POST /v1/events``, on every route that takes a key; the header stays optional here)."""

    def decorate(view: KeyedView[P]) -> Callable[P, Response]:
        @functools.wraps(view)
        def checked(*args: P.args, **kwargs: P.kwargs) -> Response:
            key = caller()
            if key is None:
                return error_json(401, refusal)
            try:
                check_account(key, request.headers.get("X-4me-Account"), required=False)
            except Refused as refused:
                return respond(refused.reply)
            return view(key, *args, **kwargs)

        return checked

    return decorate
