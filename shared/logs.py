"""Structured logs: one JSON object a line on stderr, for every role.

Every line has ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``role`` and ``event`` (what
happened: a short stable phrase such as ``accepted`` or ``processed`` for our own lines, the
message for other libraries'). Context bound with ``structlog.contextvars`` (the worker binds
``task_id`` and ``task`` around each task) is added to every line logged while it is bound.
Log decisions, not data: never a key, a signing secret, a password, a body or an event's
parameters.

Two paths, both cheap enough for the intake's hot path (bench/README.md has the cost of a line,
and of one below the level): our own lines go through structlog straight to JSON
(:func:`get_logger`); the lines of Celery, gunicorn (its access log too) and SQLAlchemy go
through stdlib logging and :class:`JsonFormatter`.

The roles configure it once at start, before logging anything: the worker from Celery's
``setup_logging`` signal, the api from gunicorn's ``logconfig_dict`` (``api/gunicorn_conf.py``).
Unconfigured (tests, the benchmark) only warnings and errors are written.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

_role = "eventdesk"


class _NamedWriteLogger(structlog.WriteLogger):
    def __init__(self, name: str, file: TextIO) -> None:
        super().__init__(file)
        self.name = name


def _logger_factory(name: str = "eventdesk", *_: Any) -> _NamedWriteLogger:
    return _NamedWriteLogger(name, sys.stderr)


def _add_logger_and_role(logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    event_dict["logger"] = getattr(logger, "name", "eventdesk")
    event_dict["role"] = _role
    return event_dict


def _processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_and_role,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(default=str),
    ]


def _configure_structlog(level: int) -> None:
    structlog.configure(
        processors=_processors(),
        # Methods below the level are no-ops: a disabled line costs almost nothing.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )


_configure_structlog(logging.WARNING)


def get_logger(name: str) -> Any:
    """A structlog logger: ``log.info("accepted", queued=3)`` writes one JSON line."""
    return structlog.get_logger(name)


class JsonFormatter(logging.Formatter):
    """Stdlib records (Celery, gunicorn, SQLAlchemy) as the same JSON lines as ours."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = dict(structlog.contextvars.get_contextvars())
        data["event"] = record.getMessage()
        data["level"] = record.levelname.lower()
        data["logger"] = record.name
        data["role"] = _role
        data["timestamp"] = (
            datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        )
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    return number if isinstance(number, int) else logging.INFO


def dict_config(role: str, level: int | str = "INFO") -> dict[str, Any]:
    """Set up our lines for ``role`` and return the ``dictConfig`` for the stdlib ones."""
    global _role  # noqa: PLW0603 - one role per process, set once at start
    _role = role
    number = _level(level)
    _configure_structlog(number)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler", "formatter": "json",
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"level": logging.getLevelName(number), "handlers": ["stderr"]},
        "loggers": {
            # gunicorn and Celery attach handlers of their own unless told: ours only.
            "gunicorn.error": {"handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
            "celery.task": {"handlers": [], "propagate": True},
        },
    }


def configure(role: str, level: int | str = "INFO") -> None:
    logging.config.dictConfig(dict_config(role, level))
