"""gunicorn settings for the api role: ``gunicorn -c python:api.gunicorn_conf api.wsgi:app``.

JSON logs for gunicorn's own lines and, with ``EVENTDESK_ACCESS_LOG=true``, the access log
(``shared.logs``), the multiprocess metrics bookkeeping when a worker process exits, the
garbage collector settled in each worker process once the app is loaded (``shared.collector``),
and a control socket of each instance's own.
"""

from __future__ import annotations

import os
import re
from typing import Any

from gunicorn import glogging

from shared import collector, logs, metrics
from shared.settings import get_settings

_settings = get_settings()
logconfig_dict = logs.dict_config("api", _settings.log_level)
# The access log as one JSON line per request: the request line, status, bytes, duration (µs).
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(D)s'


class Logger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, with the access log only when asked for.

    With ``logconfig_dict`` set, gunicorn formats an access line for every request whatever the
    ``gunicorn.access`` logger's level; this skips the formatting itself.
    """

    def access(self, *args: Any, **kwargs: Any) -> None:
        if _settings.access_log:
            super().access(*args, **kwargs)


logger_class = Logger


def post_worker_init(_worker: Any) -> None:
    collector.settle()


def child_exit(_server: Any, worker: Any) -> None:
    metrics.mark_process_dead(worker.pid, _settings.prometheus_multiproc_dir)


def on_starting(server: Any) -> None:
    """gunicorn 24+ serves a control socket at one fixed path per user by default, and a second
    instance on the host takes it over (it unlinks the first one's): ``gunicornc`` would then
    steer the wrong server. Unless one is configured, each instance gets a path named after its
    listeners, in the default's directory.
    """
    settings = server.cfg.settings
    control = settings.get("control_socket")
    if control is None or control.value != control.default:
        return
    listeners = re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(server.cfg.bind))[:64]
    path = os.path.join(os.path.dirname(control.default), f"eventdesk-{listeners}.ctl")
    server.cfg.set("control_socket", path)
