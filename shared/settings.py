"""The one place that reads the environment.

Every setting has the prefix ``EVENTDESK_`` (``EVENTDESK_DATABASE_URL``, ...). The defaults make the
embedded mode work with nothing installed: SQLite files and kombu's SQLAlchemy transport on SQLite,
both under ``./.eventdesk/``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path(".eventdesk")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """``30d``, ``12h``, ``15m``, ``90s``, ``2w``; a bare number is seconds."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, int | float):
        return timedelta(seconds=text)
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise ValueError(f"not a duration: {text!r} (say 30d, 12h, 15m or 90s)")
    return timedelta(seconds=int(found[1]) * _UNITS[found[2] or "s"])


def _duration(value: str | float | timedelta | None) -> timedelta | None:
    return None if value is None or value == "" else parse_duration(value)


# ``30d``, ``12h``, ``15m``, ``90s`` (a bare number: seconds).
Duration = Annotated[timedelta, BeforeValidator(_duration)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVENTDESK_", extra="ignore")

    data_dir: Path = DATA_DIR
    database_url: str = ""
    broker_url: str = ""
    # Redis for the shared per-key rate limit. Empty: the broker's Redis when the broker is Redis,
    # otherwise an in-process limiter (right for the embedded single-host mode only).
    redis_url: str = ""

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_events_per_request: int = Field(default=100, ge=1)
    # Per-key token bucket, counted in events (transactions), not HTTP requests.
    rate_limit_per_second: float = Field(default=2000.0, gt=0)
    rate_limit_burst: int = Field(default=4000, ge=1)
    # How long the api trusts its cached copy of a key or an event definition.
    cache_ttl_seconds: float = Field(default=5.0, ge=0)
    # How long past that TTL the api keeps using a cached key or event definition while the
    # database is unreachable (connection errors and timeouts only), so a database outage up to
    # this long does not stop the intake. 0: never use a stale copy.
    stale_cache_seconds: float = Field(default=300.0, ge=0)
    # At most this many ``Prefer: wait`` callers of one api process wait for their outcome at
    # once; beyond it they get their 202 at once. A waiting caller holds one of the process's
    # threads (8 by default), so this keeps the rest free to take events while the workers are
    # behind. 0: ``Prefer: wait`` is never honoured.
    max_waiters_per_process: int = Field(default=4, ge=0)
    # PostgreSQL: every connection attempt gives up after this long (libpq's minimum is 2 s)...
    database_connect_timeout_seconds: int = Field(default=2, ge=2)
    # ...and every statement after this long: the server cancels it, and the client stops
    # waiting half a second later (a black-holed database never answers the cancel). The api's
    # statements are single-row look-ups and short pages, so its limit keeps a request from
    # hanging; the worker's is generous, since a batch of a thousand events is one
    # transaction (its outages are handled by requeueing, not by the timeout). 0: no limit.
    database_statement_timeout_seconds: float = Field(default=3.0, ge=0)
    worker_statement_timeout_seconds: float = Field(default=120.0, ge=0)
    # Signs transaction ids so a status lookup can say "queued" before a worker has seen them.
    secret_key: str = ""

    # Celery/Redis: a message taken but not acknowledged returns to the queue after this long.
    # It bounds how long a crashed worker's events wait, and must exceed the longest task.
    visibility_timeout_seconds: int = Field(default=300, ge=30)
    # The worker's consumer gathers up to this many messages, waiting at most this long for them,
    # and hands them to its pool processes in database transactions of up to
    # worker_batch_events events each (a message is never split).
    # Larger jobs cost less per event (a job's statements are paid once), for at most the wait
    # in more latency (bench/README.md, "Operations figures").
    worker_batch_size: int = Field(default=200, ge=1)
    worker_batch_wait_seconds: float = Field(default=0.1, gt=0)
    worker_batch_events: int = Field(default=1000, ge=1)
    # The same wait for mail.process messages while mail streams in. Longer than the events': a
    # mail job's statements cost as much for ten messages as for a hundred (bench/README.md,
    # session 8). The last mail of a stream, or one alone, waits only worker/mail.QUIET_FLUSH.
    mail_batch_wait_seconds: float = Field(default=0.25, gt=0)
    notify_timeout_seconds: float = Field(default=10.0, gt=0)
    # Notify URL delivery (shared/notify/; docs/api.md "Deliveries"). notify_timeout_seconds is the
    # read timeout; connect + read timeouts also bound a whole attempt (DNS, TLS, slow senders).
    notify_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # Seconds to wait before each attempt, comma-separated: the first is the first attempt's
    # (0: at once), each next one counts from the attempt before. After the last: ``dead``.
    notify_schedule: str = "0,30,120,600,1800,7200,21600,50400"
    # Each wait is stretched or shrunk at random by up to this fraction.
    notify_jitter: float = Field(default=0.2, ge=0, lt=1)
    # A 429/503 Retry-After is honoured up to this many seconds.
    notify_retry_after_max_seconds: float = Field(default=3600.0, ge=0)
    # At most this many POSTs in flight to one receiver (host:port), across all workers: plenty
    # for a fast receiver (a few ms an answer: thousands a second), few for a slow one.
    notify_host_concurrency: int = Field(default=16, ge=1)
    # At most this many POSTs a second to one receiver, per notify worker process (0: no limit).
    notify_host_rate: float = Field(default=0.0, ge=0)
    # A claimed delivery is a worker's for its attempt's time limit plus this margin; past it the
    # sweeper takes it back (the worker died).
    notify_lease_margin_seconds: float = Field(default=30.0, gt=0)
    # The sweeper (``notify.sweep``, Celery beat) runs this often; a due delivery it has queued is
    # queued again only if still not taken after notify_requeue_seconds (a lost message).
    notify_sweep_interval_seconds: float = Field(default=5.0, gt=0)
    notify_requeue_seconds: float = Field(default=300.0, gt=0)
    # Networks notify URLs may reach although private or local (comma-separated CIDRs).
    notify_allow_networks: str = ""

    # Retention (shared/retention/, docs/operations.md): finished transactions, their
    # deliveries and attempts are removed this long after they were received; dead and
    # disabled deliveries (and their transactions) are kept for dead_delivery_retention when
    # that is longer. Requests and notes are never removed. Beat purges every purge_interval.
    transaction_retention: Duration = Field(default=timedelta(days=14), gt=timedelta(0))
    dead_delivery_retention: Duration | None = None
    purge_interval: Duration = Field(default=timedelta(minutes=5), gt=timedelta(0))
    # The Mail API (shared/mail/): the largest message taken (SMTP 552, HTTP 413), the largest
    # attachment kept (decoded; a message with a larger one is quarantined), the networks
    # the SMTP listener takes mail from (it sits behind the organisation's mail gateway, without
    # AUTH), and its STARTTLS certificate and key (PEM files; none: no STARTTLS).
    mail_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    mail_max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    smtp_allow_networks: str = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
    smtp_tls_cert: Path | None = None
    smtp_tls_key: Path | None = None
    # Per peer address and listener process: connections at once, messages a minute.
    smtp_peer_connections: int = Field(default=20, ge=1)
    smtp_peer_messages_per_minute: float = Field(default=600.0, gt=0)
    # On SIGTERM, how long the listener waits for the messages it is storing to be answered
    # (api/smtp.drain): under the deployments' grace periods (30 s), over a commit's own limit.
    smtp_drain_seconds: float = Field(default=20.0, ge=0)
    # The outbound relay (host:port) for 'Email Rejected' replies (none: not sent) and their
    # From address (none: mailer-daemon@<the account's mail domain>); the authserv-ids of the
    # receiving MTAs whose Authentication-Results are trusted for X-4me-From (comma-separated).
    mail_relay: str = ""
    # The SMTP listener's /metrics exporter (on worker_metrics_host; 0: none).
    smtp_metrics_port: int = Field(default=9809, ge=0, le=65535)
    mail_reply_from: str = ""
    mail_authserv_ids: str = ""
    # Where the attachments a worker keeps of a mail go: files named by their SHA-256 in this
    # directory (shared by the workers and the api); none: in the database.
    mail_attachment_dir: Path | None = None

    # Logs and metrics (DESIGN 7). The worker's main process serves /metrics on this port
    # (0: no exporter); the api serves it on its own port.
    log_level: str = "INFO"
    # gunicorn's access log, one line per HTTP request. Off by default: it is a measurable share
    # of the intake's CPU (bench/README.md), and the worker logs every event it processes.
    access_log: bool = False
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9808, ge=0, le=65535)
    # prometheus-client's own variable (multiprocess mode). The CLI gives each role it starts a
    # subdirectory of it (default: <data dir>/metrics), emptied on start.
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR"
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'eventdesk.sqlite').resolve()}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    def resolved_redis_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        broker = self.resolved_broker_url()
        return broker if broker.startswith(("redis://", "rediss://")) else None

    def resolved_secret_key(self) -> bytes:
        """The configured secret, or one kept in the data dir (embedded, single-host mode)."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret_key"
        if not path.exists():
            import os
            import secrets

            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}")
            tmp.write_text(secrets.token_hex(32))
            # link() fails if another process won the race; then its key is the key.
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip().encode()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
