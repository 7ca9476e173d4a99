"""gunicorn settings for the api role: ``gunicorn -c python:api.gunicorn_conf api.wsgi:app``.

JSON logs for gunicorn's own lines and the access log (``shared.logs``), and the multiprocess
metrics bookkeeping when a worker process exits.
"""

from __future__ import annotations

from typing import Any

from shared import logs, metrics
from shared.settings import get_settings

logconfig_dict = logs.dict_config("api", get_settings().log_level)
# The access log as one JSON line per request: the request line, status, bytes, duration (µs).
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(D)s'


def child_exit(_server: Any, worker: Any) -> None:
    metrics.mark_process_dead(worker.pid, get_settings().prometheus_multiproc_dir)
