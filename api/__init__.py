"""The front door: Flask blueprints that map HTTP to the intake rules in ``shared``."""

from __future__ import annotations

from flask import Flask

from shared.intake.lookup import find_definition_info, find_key_info
from shared.intake.service import WebexIntake
from shared.metrics import initialize as initialize_metrics
from shared.publish import make_publisher
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    from api import deliveries, errors, health, metrics, openapi, status, webex

    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    publisher = make_publisher(
        settings.resolved_broker_url(), settings.resolved_redis_url(),
        settings.rate_limit_per_second, settings.rate_limit_burst,
    )
    secret = settings.resolved_secret_key()
    app.extensions["eventdesk.settings"] = settings
    app.extensions["eventdesk.secret"] = secret
    app.extensions["eventdesk.publisher"] = publisher
    app.extensions["eventdesk.webex"] = WebexIntake(
        publisher=publisher,
        find_key=find_key_info,
        find_definition=find_definition_info,
        secret=secret,
        max_events=settings.max_events_per_request,
        cache_ttl=settings.cache_ttl_seconds,
    )
    for module in (webex, status, health, openapi, metrics, deliveries):
        app.register_blueprint(module.bp)
    errors.register(app)
    initialize_metrics("api")
    return app
