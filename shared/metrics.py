"""Every eventdesk metric, declared once (DESIGN 7); their names are part of the interface.

Labels are bounded, never a transid, key, URL or account:

- ``channel``: webex, 4me, mail
- ``code``: the Webex answer codes (:class:`shared.codes.Code`)
- ``outcome``: created, updated, unchanged, expired, failed
- ``queue``: events, mail, notify
- ``result``: a handful of words per metric (delivered/dead, success/failure, ...)
- ``task``: the stable Celery task names (``events.process``, ``notify.deliver``, ...)
- ``dependency``: broker, database

Multiprocess mode: gunicorn workers and Celery pool processes each write their values to files
in ``PROMETHEUS_MULTIPROC_DIR``; whoever serves ``/metrics`` adds them up. prometheus-client reads
that variable when it is imported, so it has to be set before a role starts: the CLI does it
(:func:`multiproc_dir`). Without it (tests, the benchmark, ``flask run``) values live in the
process and ``/metrics`` shows that one process.

Recording is cheap on purpose (a dictionary look-up and an add under prometheus-client's lock):
the api records once per answered request, the worker once per finished event.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.codes import Code

CHANNELS: Final = ("webex", "4me", "mail")
OUTCOMES: Final = ("created", "updated", "unchanged", "expired", "failed")

# Seconds from an event's arrival to its committed outcome: milliseconds when the workers keep
# up, minutes to hours in a backlog or a database outage.
LATENCY_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)
TASK_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

events_received = Counter(
    "eventdesk_events_received", "Event entries answered by the api, by answer code.",
    ["channel", "code"],
)
events_processed = Counter(
    "eventdesk_events_processed", "Events whose outcome a worker committed.",
    ["channel", "outcome"],
)
event_latency = Histogram(
    "eventdesk_event_latency_seconds", "Time from an event's arrival to its committed outcome.",
    ["channel"], buckets=LATENCY_BUCKETS,
)
notifications = Counter(
    "eventdesk_notifications",
    "Notifications that reached a final state: delivered, failed, disabled or dead.",
    ["result"],
)
notification_attempts = Counter(
    "eventdesk_notification_attempts", "POSTs to notify URLs, by result (success, failure).",
    ["result"],
)
# What the Mail API's doors did with a message (api/smtp.py, api/mail.py).
MAIL_RESULTS: Final = ("accepted", "refused_peer", "refused_recipient", "too_large", "invalid",
                       "unavailable")
mail_received = Counter(
    "eventdesk_mail_received", "Mail messages offered to the Mail API, by result.", ["result"],
)
# What a worker ended a stored mail as (shared/mail/service.py): quarantined and rejected mail
# is failed in eventdesk_events_processed_total too; this says why.
MAIL_OUTCOMES: Final = ("processed", "quarantined", "rejected", "failed")
mail_processed = Counter(
    "eventdesk_mail_processed", "Stored mail a worker ended, by result.", ["result"],
)
task_duration = Histogram(
    "eventdesk_task_duration_seconds",
    "Run time of Celery tasks (each retry a run; a batch task's run takes many messages).",
    ["task"],
    buckets=TASK_BUCKETS,
)
task_failures = Counter(
    "eventdesk_task_failures", "Celery tasks that raised and will not be retried.", ["task"],
)
task_retries = Counter("eventdesk_task_retries", "Celery task retries scheduled.", ["task"])

# Read at scrape time by the collectors below, not recorded by the code.
QUEUE_DEPTH: Final = "eventdesk_queue_depth"
DEPENDENCY_UP: Final = "eventdesk_dependency_up"

DECLARED: Final = frozenset({
    events_received._name, events_processed._name, event_latency._name, notifications._name,
    notification_attempts._name, mail_received._name, mail_processed._name,
    task_duration._name, task_failures._name,
    task_retries._name, QUEUE_DEPTH, DEPENDENCY_UP,
})


def initialize(role: str) -> None:
    """Create the series a role can move, at zero, so that rates and alerts see them from start."""
    if role == "api":
        for code in Code:
            events_received.labels("webex", code.value)
    elif role == "worker":
        for channel in CHANNELS:
            event_latency.labels(channel)
            for outcome in OUTCOMES:
                events_processed.labels(channel, outcome)
        for result in ("delivered", "failed", "disabled", "dead"):
            notifications.labels(result)
        for result in ("success", "failure"):
            notification_attempts.labels(result)
        for result in MAIL_OUTCOMES:
            mail_processed.labels(result)
    elif role == "smtp":
        for result in MAIL_RESULTS:
            mail_received.labels(result)


# The labelled children, looked up once: labels() takes a lock and validates on every call.
# The label values are bounded, so these caches are too.
@cache
def _received(channel: str, code: str) -> Counter:
    return events_received.labels(channel, code)


@cache
def _processed(channel: str, outcome: str) -> tuple[Counter, Histogram]:
    return events_processed.labels(channel, outcome), event_latency.labels(channel)


def record_received(channel: str, entries: list[dict[str, Any]]) -> None:
    """One answered request: each entry counts once under its code."""
    if len(entries) == 1:
        _received(channel, entries[0]["code"]).inc()
        return
    for code, count in Tally(entry["code"] for entry in entries).items():
        _received(channel, code).inc(count)


def record_processed(channel: str, outcome: str, latency_seconds: float) -> None:
    """One event's committed outcome (one of :data:`OUTCOMES`)."""
    counter, latency = _processed(channel, outcome)
    counter.inc()
    latency.observe(max(0.0, latency_seconds))


# ---------------------------------------------------------------------------------------------
# Multiprocess mode


def multiproc_dir(base: Path | None, data_dir: Path, role: str) -> Path:
    """An empty directory for one role's metric files: ``<base or data dir/metrics>/<role>``.

    Each role (``api-8000``, ``worker-9808``) gets its own, so two roles on one host never add up
    each other's values; it is emptied because files left by an earlier run would be summed in.
    """
    path = (base or data_dir.resolve() / "metrics") / role
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def mark_process_dead(pid: int, path: Path | None) -> None:
    """Drop a dead process's live gauges (its counters stay: they must never go down)."""
    if path is not None:
        multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def registry(path: Path | None, collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """The registry to expose: every process's files in multiprocess mode, else this process."""
    if path is None:
        target = REGISTRY
    else:
        target = CollectorRegistry()
        multiprocess.MultiProcessCollector(target, path=str(path))  # type: ignore[no-untyped-call]
    for collector in collectors:
        target.register(collector)
    return target


def exposition(path: Path | None) -> tuple[bytes, str]:
    """The text exposition format for ``GET /metrics``, and its content type."""
    return generate_latest(registry(path)), CONTENT_TYPE_LATEST


def start_exporter(host: str, port: int, target: CollectorRegistry) -> Any:
    """Serve ``target`` on ``http://host:port/metrics`` from a daemon thread; returns the server."""
    server, _thread = start_http_server(port, host, registry=target)
    return server


# ---------------------------------------------------------------------------------------------
# Read at scrape time


class ProbeCollector(Collector):
    """``eventdesk_queue_depth{queue}`` and ``eventdesk_dependency_up{dependency}``.

    ``probe`` asks the broker and the database (see :mod:`shared.probe`); its answer is kept for
    ``max_age`` seconds, so however many scrapers there are, the broker sees at most one
    look-up per queue that often, and a scrape never waits for more than one probe.
    """

    def __init__(
        self, probe: Callable[[], tuple[Mapping[str, int | None], Mapping[str, bool]]],
        max_age: float = 5.0,
    ) -> None:
        self._probe = probe
        self._max_age = max_age
        self._lock = threading.Lock()
        self._at = -max_age
        self._depths: Mapping[str, int | None] = {}
        self._up: Mapping[str, bool] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._at >= self._max_age:
                self._depths, self._up = self._probe()
                self._at = time.monotonic()
            depths, up = self._depths, self._up
        depth = GaugeMetricFamily(QUEUE_DEPTH, "Messages waiting in a broker queue.",
                                  labels=["queue"])
        for queue, count in depths.items():
            if count is not None:
                depth.add_metric([queue], count)
        yield depth
        reachable = GaugeMetricFamily(
            DEPENDENCY_UP, "1 if the broker or the database answered the last probe, else 0.",
            labels=["dependency"],
        )
        for name, ok in up.items():
            reachable.add_metric([name], 1.0 if ok else 0.0)
        yield reachable
