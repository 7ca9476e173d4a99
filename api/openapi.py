"""``GET /openapi.json``, generated from the pydantic models that validate the requests."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, json
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.intake.fourme.schemas import FourMeError, FourMeEventParameters, FourMeQueued
from shared.intake.webex.schemas import WebexEventRequest, WebexResponse
from shared.mail.schemas import AttachmentView, MailQueued
from shared.notify.payload import Notification
from shared.notify.rules import STATES
from shared.notify.schemas import DeliveryList, Redelivery
from shared.requests.views import NoteView, RequestView
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
         (TransactionView, "serialization"), (Notification, "serialization"),
         (DeliveryList, "serialization"), (Redelivery, "serialization"),
         (FourMeEventParameters, "validation"), (FourMeQueued, "serialization"),
         (FourMeError, "serialization"), (RequestView, "serialization"),
         (NoteView, "serialization"), (MailQueued, "serialization"),
         (AttachmentView, "serialization")],
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
        "webhooks": {"notification": _notification_webhook()},
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
            **_delivery_paths(),
            **_fourme_paths(),
            **_mail_paths(),
            "/healthz": {"get": {"responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"responses": {"200": {"description": "Ready"},
                                              "503": {"description": "Broker or database down"}}}},
        },
    }


_TRANSID = {"name": "transid", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH: list[dict[str, list[str]]] = [{"key": []}, {"bearer": []}]


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": name != "x-hub-signature",
            "description": description, "schema": {"type": "string"}}


def _notification_webhook() -> dict[str, Any]:
    """The POST a notify URL receives (DESIGN 5; docs/api.md "Notifications")."""
    return {"post": {
        "summary": "A transaction ended: its outcome, to the event's notifyurl",
        "description": (
            "Signed per Standard Webhooks (https://www.standardwebhooks.com/): verify "
            "webhook-signature over `<webhook-id>.<webhook-timestamp>.<body>` with the account's "
            "signing secret, e.g. with the standardwebhooks package. Any 2xx acknowledges it. "
            "Retried on connection errors, timeouts, 408, 429 (Retry-After honoured) and 5xx "
            "with capped exponential backoff and jitter (about 8 attempts over 24 h), always "
            "with the same webhook-id; deduplicate on it. Not retried on other statuses; 410 "
            "Gone disables the URL (later notifications to it are not sent; a redelivery "
            "enables it again). Redirects are not followed."
        ),
        "parameters": [
            _header("webhook-id", "The notification's id: the same on every attempt."),
            _header("webhook-timestamp", "Unix time of this attempt, in seconds."),
            _header("webhook-signature",
                    "`v1,<base64 HMAC-SHA256>`, one per signing secret, space-separated."),
            _header("x-hub-signature", "`sha256=<hex HMAC-SHA256 of the body>`, if the "
                    "account asks for it, with its newest secret."),
        ],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref(Notification)},
        }},
        "responses": {
            "2XX": {"description": "Received; not sent again"},
            "410": {"description": "Gone: the URL is disabled; nothing more is sent to it"},
            "default": {"description": "Retried if 408, 429 or 5xx; otherwise given up"},
        },
    }}


def _delivery_paths() -> dict[str, Any]:
    return {
        "/v1/transactions/{transid}/redeliver": {"post": {
            "summary": "Send a finished notification again (same webhook-id, fresh schedule)",
            "security": _AUTH,
            "parameters": [_TRANSID],
            "responses": {
                "202": _json_body(Redelivery, "Queued"),
                "401": {"description": "No valid key"},
                "404": {"description": "No notification for this transaction in this account"},
                "409": {"description": "The notification is pending or being sent"},
            },
        }},
        "/v1/deliveries": {"get": {
            "summary": "The account's notification deliveries, newest first",
            "security": _AUTH,
            "parameters": [
                {"name": "status", "in": "query", "schema": {
                    "type": "string", "enum": list(STATES)}},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                {"name": "before", "in": "query", "description": "The previous page's `next`.",
                 "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json_body(DeliveryList, "A page of deliveries"),
                "400": {"description": "A bad parameter"},
                "401": {"description": "No valid key"},
            },
        }},
    }


def _mail_paths() -> dict[str, Any]:
    """POST /v1/mail and what mail brought to a request (docs/api.md "4me Mail API")."""
    refused = {str(status): {"description": text} for status, text in (
        (400, "No recipient"), (401, "No valid key"), (413, "Over EVENTDESK_MAIL_MAX_BYTES"),
        (415, "Not message/rfc822"), (422, "Not an address of the key's account"),
        (503, "Database unreachable: not stored"))}
    return {
        "/v1/mail": {"post": {
            "summary": "4me Mail API: a raw message, as the mail gateway received it",
            "security": _AUTH,
            "parameters": [
                {"name": "recipient", "in": "query", "required": False,
                 "description": "The address it was sent to (or X-4me-Recipient)",
                 "schema": {"type": "string"}},
                {"name": "X-4me-Recipient", "in": "header", "required": False,
                 "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"message/rfc822": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {"202": _json_body(MailQueued, "Stored; its state is at Location"),
                          **refused},
        }},
        "/v1/requests/{id}/attachments": {"get": {
            "summary": "Attachments of the mail that created or added notes to the request",
            "security": _AUTH,
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "The attachments", "content": {
                "application/json": {"schema": {"type": "array",
                                                "items": _ref(AttachmentView)}}}},
                          "404": {"description": "Not a request of this account"}},
        }},
        "/v1/mail/{transid}/attachments/{index}": {"get": {
            "summary": "One attachment's content (always application/octet-stream)",
            "security": _AUTH,
            "parameters": [_TRANSID, {"name": "index", "in": "path", "required": True,
                                      "schema": {"type": "integer", "maximum": 19}}],
            "responses": {"200": {"description": "The content", "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}},
                          "404": {"description": "No such attachment of this account"}},
        }},
    }


def _fourme_paths() -> dict[str, Any]:
    """The 4me Events API and the read API of requests (docs/api.md "4me Events API")."""
    error = _json_body(FourMeError, "{message}; errors: the fields at fault (422 only)")
    account = {"name": "X-4me-Account", "in": "header", "schema": {"type": "string"},
               "description": "The account id; must be the token's account."}
    page = [
        {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
        {"name": "per_page", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 25}},
    ]
    request_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
    listed = {"description": "A page; Link (first, prev, next, last) and X-Pagination-* headers"}
    reads: dict[str, Any] = {
        "security": _AUTH, "parameters": [{**account, "required": False}],
    }
    missing = {"404": {"description": "No such request in the caller's account"}}
    return {
        "/v1/events": {"post": {
            "summary": "4me Events API: create or update a request from an event",
            "description": "Parameters as a JSON body, a form body or the query string (the body "
                           "wins). `Prefer: wait=N` (N <= 30) waits for the outcome.",
            "security": [{"bearer": []}],
            "parameters": [
                {**account, "required": True},
                {"name": "Prefer", "in": "header", "schema": {"type": "string"},
                 "description": "`wait=N`: wait up to N seconds (at most 30) for the outcome."},
            ],
            "requestBody": {"content": {
                "application/json": {"schema": _ref(FourMeEventParameters)},
                "application/x-www-form-urlencoded": {"schema": _ref(FourMeEventParameters)},
            }},
            "responses": {
                "200": _json_body(RequestView, "Prefer: wait: the event matched this request"),
                "201": _json_body(RequestView, "Prefer: wait: the request the event created"),
                "202": _json_body(FourMeQueued, "Queued; Location: the transaction"),
                **{str(status): error for status in (400, 401, 413, 415, 422, 429, 503)},
            },
        }},
        "/v1/requests": {"get": {
            **reads, "summary": "The account's requests, oldest first",
            "parameters": [*reads["parameters"], *page, *(
                {"name": name, "in": "query", "schema": {"type": "string"}}
                for name in ("source", "sourceID", "status", "updated_since"))],
            "responses": {"200": {**listed, "content": {"application/json": {"schema": {
                "type": "array", "items": _ref(RequestView)}}}},
                          "400": error, "401": error},
        }},
        "/v1/requests/{id}": {"get": {
            **reads, "summary": "One request",
            "parameters": [*reads["parameters"], request_id],
            "responses": {"200": _json_body(RequestView, "The request"), "401": error,
                          **missing},
        }},
        "/v1/requests/{id}/notes": {"get": {
            **reads, "summary": "The request's notes, oldest first",
            "parameters": [*reads["parameters"], request_id, *page],
            "responses": {"200": {**listed, "content": {"application/json": {"schema": {
                "type": "array", "items": _ref(NoteView)}}}},
                          "400": error, "401": error, **missing},
        }},
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(json.dumps(document()), 200, mimetype="application/json")
