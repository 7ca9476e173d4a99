"""``GET /openapi.json``, generated from the routes' declarations (api/operations.py).

CI runs schemathesis over the document (tests/test_openapi.py) to show that the service answers
as it says.

Decision: a registry of our own (api/operations.py) instead of spectree or flask-openapi3. Both
validate with pydantic and generate the document, but each wraps the view with its own
validation and answers a refusal in its own shape (422 with pydantic's error list), where ours
are a 400 ``{"message"}`` naming the parameter and the 4me shape on the 4me routes; neither
knows the Webex intake, which is plain WSGI ahead of Flask (api/webex.py), nor its XML body;
flask-openapi3 replaces ``Flask`` and ``Blueprint`` with its own classes. What we need of them is
pydantic's JSON schema, which pydantic gives; the rest is the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, get_args, get_origin

from flask import Blueprint, Response, json
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

# Importing the routes' modules declares their operations (api/operations.py).
from api import deliveries, fourme, health, mail, metrics, requests, status, webex  # noqa: F401
from api.operations import OPERATIONS, SECURITY, Answer, Header, Operation, route
from api.query import BLANK
from shared.notify.payload import Notification

bp = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"


class _Models:
    """The models the document refers to, gathered while its operations are rendered."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[type[BaseModel], str]] = {}

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, Any]:
        self.seen.setdefault(model.__name__, (model, mode))
        return {"$ref": _REF.format(model=model.__name__)}

    def schema(self, body: Any, mode: str) -> dict[str, Any]:
        if isinstance(body, Mapping):
            return dict(body)
        if get_origin(body) is list:
            return {"type": "array", "items": self.schema(get_args(body)[0], mode)}
        return self.ref(body, mode)

    def components(self) -> dict[str, Any]:
        _, schemas = models_json_schema(
            [(model, mode) for model, mode in self.seen.values()],  # type: ignore[misc]
            ref_template=_REF)
        defs: dict[str, Any] = schemas.get("$defs", {})
        return defs


def _parameters(location: str, model: type[BaseModel] | None) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", ()))
    parameters = []
    for name, declared in schema.get("properties", {}).items():
        # A parameter is text or absent, never null.
        prop = textual(declared, schema.get("$defs", {}))
        prop.pop("title", None)
        description = prop.pop("description", None)
        mandatory = name in required or location == "path"
        if location == "query" and not mandatory:
            prop = {"anyOf": [prop, BLANK], **({"default": prop.pop("default")}
                                               if "default" in prop else {})}
        parameter = {"name": name, "in": location, "required": mandatory, "schema": prop}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _header(header: Header) -> dict[str, Any]:
    return {"name": header.name, "in": "header", "required": header.required,
            "description": header.description, "schema": dict(header.schema)}


def _answer(answer: Answer, models: _Models) -> dict[str, Any]:
    rendered: dict[str, Any] = {"description": answer.description}
    if answer.body is not None:
        rendered["content"] = {answer.media: {"schema": models.schema(answer.body,
                                                                      "serialization")}}
    if answer.headers:
        rendered["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                               for name, text in answer.headers.items()}
    return rendered


def _operation(operation: Operation[Any], models: _Models) -> dict[str, Any]:
    rendered: dict[str, Any] = {"summary": operation.summary}
    if operation.description:
        rendered["description"] = operation.description
    rendered["security"] = [{name: []} for name in operation.security]
    parameters = [*_parameters("path", operation.params), *_parameters("query", operation.query),
                  *(_header(header) for header in operation.headers)]
    if parameters:
        rendered["parameters"] = parameters
    if operation.body:
        rendered["requestBody"] = {"required": operation.body_required, "content": {
            media: {"schema": models.schema(body, "validation")}
            for media, body in operation.body.items()}}
    rendered["responses"] = {str(code): _answer(answer, models)
                             for code, answer in operation.responses.items()}
    return rendered


def textual(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """A schema as text carries it (an XML body, a query parameter): references inlined, and
    no ``null`` (absent is null there). ``xml`` names stay."""

    def form(node: Any) -> Any:
        if isinstance(node, list):
            return [form(item) for item in node]
        if not isinstance(node, Mapping):
            return node
        if "$ref" in node:
            return form({**defs[node["$ref"].rsplit("/", 1)[1]],
                         **{k: v for k, v in node.items() if k != "$ref"}})
        result = {key: form(value) for key, value in node.items()
                  if not (key == "default" and value is None)}
        if "anyOf" in result:
            options = [option for option in result.pop("anyOf") if option != {"type": "null"}]
            if len(options) == 1:
                result = {**options[0], **result}
            else:
                result["anyOf"] = options
        return result

    return dict(form(schema))


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    models = _Models()
    paths: dict[str, dict[str, Any]] = {}
    for operation in (webex.WEBEX, *OPERATIONS):
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
            operation, models)
    webhook = _notification_webhook(models)
    schemas = models.components()
    for path in paths.values():
        for rendered in path.values():
            for media, content in rendered.get("requestBody", {}).get("content", {}).items():
                if media.endswith("xml"):
                    content["schema"] = textual(content["schema"], schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "eventdesk", "version": "0.1.0", "description": (
            "Event intake for IT service management: the Webex Connect Custom Event API, the "
            "4me Events and Mail APIs, and the state of what was accepted.")},
        "servers": [{"url": "/", "description": "This eventdesk api (gunicorn; in production "
                                                "behind your TLS-terminating proxy)"}],
        "components": {"schemas": schemas, "securitySchemes": SECURITY},
        "webhooks": {"notification": webhook},
        "paths": paths,
    }


def _notification_webhook(models: _Models) -> dict[str, Any]:
    """The POST a notify URL receives (DESIGN 5; docs/api.md "Notifications")."""
    headers = (
        Header("webhook-id", "The notification's id: the same on every attempt.", True),
        Header("webhook-timestamp", "Unix time of this attempt, in seconds.", True),
        Header("webhook-signature",
               "`v1,<base64 HMAC-SHA256>`, one per signing secret, space-separated.", True),
        Header("x-hub-signature", "`sha256=<hex HMAC-SHA256 of the body>`, if the account asks "
               "for it, with its newest secret."),
    )
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
        "parameters": [_header(header) for header in headers],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": models.ref(Notification, "serialization")},
        }},
        "responses": {
            "2XX": {"description": "Received; not sent again"},
            "410": {"description": "Gone: the URL is disabled; nothing more is sent to it"},
            "default": {"description": "Retried if 408, 429 or 5xx; otherwise given up"},
        },
    }}


OPENAPI = Operation(
    "GET", "/openapi.json", "This document",
    {200: Answer("The OpenAPI 3.1 document", {"type": "object"})},
)


@route(bp, OPENAPI)
def openapi() -> Response:
    return Response(json.dumps(document()), 200, mimetype="application/json")
