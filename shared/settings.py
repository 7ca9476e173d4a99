"""The one place that reads the environment.

Every setting has the prefix ``EVENTDESK_`` (``EVENTDESK_DATABASE_URL``, ...). The defaults make the
embedded mode work with nothing installed: SQLite files and kombu's SQLAlchemy transport on SQLite,
both under ``./.eventdesk/``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path(".eventdesk")


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
    # Signs transaction ids so a status lookup can say "queued" before a worker has seen them.
    secret_key: str = ""

    # Celery/Redis: a message taken but not acknowledged returns to the queue after this long.
    # It bounds how long a crashed worker's events wait, and must exceed the longest task.
    visibility_timeout_seconds: int = Field(default=300, ge=30)
    # A task that meets a database outage retries with capped backoff for this long.
    db_retry_window_seconds: int = Field(default=24 * 3600, ge=60)
    notify_timeout_seconds: float = Field(default=10.0, gt=0)

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
