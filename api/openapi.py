"""``GET /openapi.json``, generated from the pydantic models that validate the requests."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, json
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.intake.webex import WebexEventRequest, WebexResponse
from shared.transactions.schemas import TransactionView

bp = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(WebexEventRequest, "validation"), (WebexResponse, "serialization"),
         (TransactionView, "serialization")],
        ref_template=_REF,
    )
    webex_answer = _json_body(WebexResponse, "One entry per event, or one for the request")
    return {
        "openapi": "3.1.0",
        "info": {"title": "eventdesk", "version": "0.1.0"},
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "key": {"type": "apiKey", "in": "header", "name": "key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "paths": {
            "/resources/v1/events/externalevent/": {
                "post": {
                    "summary": "Webex Connect Custom Event v1",
                    "security": [{"key": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref(WebexEventRequest)},
                            "application/xml": {"schema": _ref(WebexEventRequest)},
                        },
                    },
                    "responses": {
                        str(status): webex_answer for status in (200, 400, 401, 413, 429, 503)
                    },
                }
            },
            "/v1/transactions/{transid}": {
                "get": {
                    "summary": "The state of one accepted event",
                    "security": [{"key": []}, {"bearer": []}],
                    "parameters": [{"name": "transid", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json_body(TransactionView, "The transaction"),
                        "401": {"description": "No valid key"},
                        "404": {"description": "Not a transaction of this account"},
                    },
                }
            },
            "/healthz": {"get": {"responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"responses": {"200": {"description": "Ready"},
                                              "503": {"description": "Broker or database down"}}}},
        },
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(json.dumps(document()), 200, mimetype="application/json")
