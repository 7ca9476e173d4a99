"""``GET /metrics``: the api's metrics in Prometheus text format (DESIGN 7).

Under gunicorn the CLI sets ``PROMETHEUS_MULTIPROC_DIR``, and this adds up the files of every
worker process, so any worker answers for all of them.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from api.operations import Answer, Operation, route
from shared import metrics
from shared.settings import Settings

bp = Blueprint("metrics", __name__)


METRICS = Operation(
    "GET", "/metrics", "The api's metrics",
    {200: Answer("Prometheus text format", {"type": "string"}, media="text/plain")})


@route(bp, METRICS)
def scrape() -> Response:
    settings: Settings = current_app.extensions["eventdesk.settings"]
    body, content_type = metrics.exposition(settings.prometheus_multiproc_dir)
    return Response(body, 200, content_type=content_type)
