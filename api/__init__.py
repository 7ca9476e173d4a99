"""The front door: Flask blueprints that map HTTP to the intake rules in ``shared``, and the
Webex intake route in plain WSGI ahead of them (its cost per request: api/webex.py)."""

from __future__ import annotations

from flask import Blueprint, Flask

from shared.db.lookup import Outage
from shared.intake.fourme.service import FourMeIntake
from shared.intake.queries import find_definition_info, find_request, find_transaction
from shared.intake.waiters import WaitSlots
from shared.intake.webex.service import WebexIntake
from shared.mail.service import MailIntake
from shared.messaging.publish import make_publisher
from shared.messaging.queueing import EventQueue
from shared.metrics import initialize as initialize_metrics
from shared.notify.ssrf import parse_networks
from shared.records.keys import Keys, find_key_info
from shared.settings import Settings, get_settings


def blueprints() -> tuple[Blueprint, ...]:
    """Every Flask route's blueprint; importing their modules declares their operations
    (api/operations.py)."""
    from api import deliveries, fourme, health, mail, metrics, openapi, requests, status

    return tuple(module.bp for module in (
        fourme, mail, requests, status, health, openapi, metrics, deliveries))


def create_app(settings: Settings | None = None) -> Flask:
    from api import errors, webex
    from api.health import DatabaseCheck

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
    # One per process, shared by both front doors: their concurrent batches share messages.
    queue = EventQueue(publisher)
    # One key cache for every front door; one pause after an outage for it and the definitions.
    outage = Outage(settings.cache_ttl_seconds)
    app.extensions["eventdesk.keys"] = keys = Keys(
        find_key_info, ttl=settings.cache_ttl_seconds, stale=settings.stale_cache_seconds,
        outage=outage,
    )
    app.extensions["eventdesk.webex"] = webex_intake = WebexIntake(
        queue=queue,
        keys=keys,
        find_definition=find_definition_info,
        secret=secret,
        max_events=settings.max_events_per_request,
        cache_ttl=settings.cache_ttl_seconds,
        stale_cache=settings.stale_cache_seconds,
        outage=outage,
        notify_allow=parse_networks(settings.notify_allow_networks),
    )
    app.extensions["eventdesk.waiters"] = waiters = WaitSlots(settings.max_waiters_per_process)
    # The 4me Events API: the same keys (and key cache), queue and rate limit.
    app.extensions["eventdesk.fourme"] = FourMeIntake(
        queue=queue, keys=keys, secret=secret,
        find_transaction=find_transaction, find_request=find_request, waiters=waiters,
    )
    # The 4me Mail API's HTTP door: the same publisher; the raw message goes to the database.
    app.extensions["eventdesk.mail"] = MailIntake(publisher, secret, settings.mail_max_bytes,
                                                   settings.cache_ttl_seconds)
    app.extensions["eventdesk.database_check"] = DatabaseCheck()
    for blueprint in blueprints():
        app.register_blueprint(blueprint)
    errors.register(app)
    # The Webex intake, the busiest route, in plain WSGI ahead of Flask (api/webex.py).
    app.wsgi_app = webex.FrontDoor(  # type: ignore[method-assign]
        app.wsgi_app, webex_intake, settings.max_body_bytes)
    initialize_metrics("api")
    return app
