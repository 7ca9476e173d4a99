"""Every error is JSON in the shape of the route's API; nothing answers with a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask, Response, json, request
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.query import BadQuery
from shared.db.lookup import LookupUnavailable

log = logging.getLogger(__name__)


def reply_json(status: int, body: object, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def error_json(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return reply_json(status, {"message": message}, headers)


def register(app: Flask) -> None:
    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return error_json(413, f"the body is larger than {limit} bytes")

    @app.errorhandler(LookupUnavailable)
    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_down(_: Exception) -> Response:
        # Reading a transaction, a request or a key needs the database; intake itself does not.
        log.warning("database unreachable on %s %s", request.method, request.path)
        return error_json(503, "the database is unreachable; try again shortly")

    @app.errorhandler(BadQuery)
    def bad_query(error: BadQuery) -> Response:
        return error_json(400, str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # The exception's own headers but its HTML type: a 405's Allow (RFC 9110 15.5.6).
        headers = {name: value for name, value in error.get_headers()
                   if name.lower() != "content-type"}
        return error_json(error.code or 500, error.description or error.name, headers)

    @app.errorhandler(Exception)
    def unexpected(_: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_json(500, "internal error")
