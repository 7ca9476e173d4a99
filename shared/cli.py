"""``eventdesk``: one command for every role and chore.

The roles (api, worker) run as processes started by module path, so the CLI imports neither.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from shared.settings import get_settings

# Package data, so that ``run --demo`` works from an installed wheel as from the checkout.
DEMO_FILE = Path(__file__).resolve().parent / "records" / "demo.yaml"
# Threads per api process: they mostly wait on the broker's answer, and the more requests a
# process has in hand at once, the more of them share one message (group commit,
# shared/messaging/queueing.py).
API_THREADS = 8


def gunicorn_command(host: str, port: int, workers: int, threads: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(threads),
        "--graceful-timeout", "20", "--config", "python:api.gunicorn_conf", "api.wsgi:app",
    ]


def worker_command(
    queues: str, concurrency: int, loglevel: str = "INFO", *, beat: bool = False
) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queues,
        "--concurrency", str(concurrency), "--loglevel", loglevel, "--without-gossip",
        "--without-mingle", *(["--beat"] if beat else []),
    ]


def smtp_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "api.smtp", "--host", host, "--port", str(port)]


def beat_command(loglevel: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", loglevel]


def role_env(role: str) -> dict[str, str]:
    """The environment for one role's processes: its own empty metrics directory.

    prometheus-client reads PROMETHEUS_MULTIPROC_DIR when it is imported, so it is set here,
    before the role starts, to ``<PROMETHEUS_MULTIPROC_DIR or data dir/metrics>/<role>``.
    """
    from shared.metrics import multiproc_dir

    settings = get_settings()
    path = multiproc_dir(settings.prometheus_multiproc_dir, settings.data_dir, role)
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path)}


@click.group()
def main() -> None:
    """eventdesk: queue-driven event intake for IT service management."""


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from shared.db.migrate import upgrade

    upgrade()
    click.echo(f"database ready: {_safe_url(get_settings().resolved_database_url())}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.rsplit("@", maxsplit=1)[-1]


def _import(path: Path) -> dict[str, int]:
    from shared.db.engine import session_scope
    from shared.records.importer import import_file

    with session_scope() as session:
        return import_file(session, path)


@main.group()
def records() -> None:
    """Reference records: accounts, people, teams, CIs, templates, event definitions, keys."""


@records.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def records_import(file: Path) -> None:
    """Load FILE (YAML or JSON); running it again changes nothing."""
    from shared.records.importer import RecordsError

    try:
        counts = _import(file)
    except RecordsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(", ".join(f"{kind}: {count}" for kind, count in counts.items()) or "nothing")


@records.command("export")
def records_export() -> None:
    """Print every reference record as YAML (API keys without their secret)."""
    import yaml

    from shared.db.engine import session_scope
    from shared.records.importer import export_records

    with session_scope() as session:
        click.echo(yaml.safe_dump(export_records(session), sort_keys=False))


@main.group()
def keys() -> None:
    """API keys (Webex service keys and 4me bearer tokens)."""


@keys.command("create")
@click.option("--account", required=True, help="Account id the key acts in.")
@click.option("--name", required=True, help="What the key is for.")
@click.option("--person-id", type=int, default=None, help="Person the key acts as (4me token).")
def keys_create(account: str, name: str, person_id: int | None) -> None:
    """Create a key and print its id and the key; only its hash is stored, so this is the one
    chance to copy it."""
    from shared.db.engine import session_scope
    from shared.records.keys import UnknownRecord, create_key, find_key

    try:
        with session_scope() as session:
            key = create_key(session, account, name, person_id=person_id)
            created = find_key(session, key)
            assert created is not None
            key_id = created.id
    except UnknownRecord as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"id: {key_id}\nkey: {key}")


@keys.command("list")
@click.option("--account", default=None, help="Only the keys of this account.")
def keys_list(account: str | None) -> None:
    """Every key (never the key itself): id, account, name, person, created, revoked."""
    from shared.db.engine import session_scope
    from shared.records.keys import list_keys

    def when(moment: datetime | None) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"

    with session_scope() as session:
        rows = [
            (str(key.id), key.account_id, key.name,
             "-" if key.person_id is None else str(key.person_id),
             when(key.created_at), when(key.revoked_at))
            for key in list_keys(session, account)
        ]
    header = ("id", "account", "name", "person", "created", "revoked")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                   .rstrip())


@keys.command("revoke")
@click.argument("key_or_id")
def keys_revoke(key_or_id: str) -> None:
    """Revoke a key, given the key itself or its id (revoking a revoked key changes nothing)."""
    from shared.db.engine import session_scope
    from shared.records.keys import Revoked, revoke_key

    with session_scope() as session:
        result = revoke_key(session, key_or_id)
    if result is Revoked.NO_SUCH_KEY:
        raise click.ClickException(result.value)
    click.echo(result.value)


@main.command()
@click.option("--older-than", "older_than", metavar="DURATION", default=None,
              help="Remove finished transactions received longer ago than this (30d, 12h, "
                   "90s). Default: EVENTDESK_TRANSACTION_RETENTION.")
def purge(older_than: str | None) -> None:
    """Remove finished transactions, their deliveries and attempts, past retention.

    Requests and notes are never removed. Runs in short batches, safe beside a live service.
    """
    from datetime import UTC, datetime

    from shared.retention.service import horizon_for
    from shared.retention.service import purge as purge_log
    from shared.settings import parse_duration

    try:
        age = parse_duration(older_than) if older_than is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    result = purge_log(horizon_for(get_settings(), datetime.now(UTC), age))
    for table, count in result.counts().items():
        click.echo(f"{table}: {count} removed")
    click.echo(f"received before {result.horizon:%Y-%m-%dT%H:%M:%SZ}; "
               f"{result.batches} batches in {result.seconds:.2f} s, "
               f"the longest {result.longest_batch_seconds * 1000:.0f} ms")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes")
@click.option("--threads", default=API_THREADS, show_default=True,
              help="threads per gunicorn worker")
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the HTTP API under gunicorn."""
    command = gunicorn_command(host, port, workers, threads)
    os.execve(sys.executable, command, role_env(f"api-{port}"))  # noqa: S606


@main.command()
@click.option("--queues", default="events,mail,notify", show_default=True)
@click.option("--concurrency", default=2, show_default=True)
def worker(queues: str, concurrency: int) -> None:
    """Run a Celery worker."""
    settings = get_settings()
    command = worker_command(queues, concurrency, settings.log_level)
    os.execve(sys.executable, command, role_env(f"worker-{settings.worker_metrics_port}"))  # noqa: S606


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2525, show_default=True)
def smtp(host: str, port: int) -> None:
    """Serve the 4me Mail API over SMTP (aiosmtpd)."""
    os.execve(sys.executable, smtp_command(host, port), role_env(f"smtp-{port}"))  # noqa: S606


@main.command()
def beat() -> None:
    """Run Celery beat: the clock of the notify and mail sweepers and the purge. Run exactly one."""
    os.execv(sys.executable, beat_command(get_settings().log_level))  # noqa: S606


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="HTTP API port")
@click.option("--smtp-port", default=2525, show_default=True, help="SMTP port (Mail API)")
@click.option("--metrics-port", type=int, default=None,
              help="The worker's /metrics port (default: EVENTDESK_WORKER_METRICS_PORT, "
                   "9808; 0: none).")
@click.option("--demo", is_flag=True, help=f"Load the demo records ({DEMO_FILE.name}).")
@click.option("--concurrency", default=2, show_default=True, help="worker processes")
def run(*, host: str, port: int, smtp_port: int, metrics_port: int | None, demo: bool,
        concurrency: int) -> None:
    """Run the whole service: migrate, then the API, the SMTP listener and a worker, until Ctrl-C.

    With no configuration it uses SQLite and kombu's SQLAlchemy transport on SQLite, both in
    ./.eventdesk/, so nothing else has to be installed.
    """
    from shared.db.migrate import upgrade
    from shared.messaging.publish import declare_queues

    if metrics_port is not None:
        # The worker reads its settings from the environment it inherits.
        os.environ["EVENTDESK_WORKER_METRICS_PORT"] = str(metrics_port)
        get_settings.cache_clear()
    settings = get_settings()
    for taken, option in ((port, "--port"), (smtp_port, "--smtp-port")):
        if not _port_free(host, taken):
            raise click.ClickException(f"{host}:{taken} is already in use: stop what listens "
                                       f"there, or choose another {option}")
    metrics_at = (settings.worker_metrics_host, settings.worker_metrics_port)
    if metrics_at[1] and not _port_free(*metrics_at):
        click.echo(f"Warning: {metrics_at[0]}:{metrics_at[1]} is already in use, so the worker "
                   "serves no /metrics: set EVENTDESK_WORKER_METRICS_PORT or --metrics-port "
                   "(0: none)", err=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade()
    declare_queues(settings.resolved_broker_url())
    if demo:
        _import(DEMO_FILE)
        click.echo("demo records loaded: account wdc, key 'demo-key' (demo only)")
    procs = [
        subprocess.Popen(  # noqa: S603
            # With the beat (-B): one process in the embedded mode runs the notify sweeper too.
            worker_command("events,mail,notify", concurrency, settings.log_level, beat=True),
            env=role_env(f"worker-{settings.worker_metrics_port}"),
        ),
        subprocess.Popen(gunicorn_command(host, port, 2, API_THREADS), env=role_env(f"api-{port}")),  # noqa: S603
        subprocess.Popen(smtp_command(host, smtp_port), env=role_env(f"smtp-{smtp_port}")),  # noqa: S603
    ]

    def listening() -> bool:
        # Connecting, not binding: a probe bound for an instant could make gunicorn's bind fail.
        # Both doors: the SMTP listener may bind after the API, and mail sent once this is
        # announced must find it.
        for door in (port, smtp_port):
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                if probe.connect_ex((host, door)) != 0:
                    return False
        click.echo(f"eventdesk listening on http://{host}:{port} and smtp://{host}:{smtp_port}"
                   "  (Ctrl-C stops)")
        return True

    _supervise(procs, listening)


def _port_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (with SO_REUSEADDR, as gunicorn does)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _supervise(procs: list[subprocess.Popen[Any]], ready: Callable[[], bool]) -> None:
    """Wait until a child exits or we are told to stop; then stop every child.

    ``ready`` is asked until it says the service is up (it announces it); a child that exits
    before is a one-line error.
    """
    stopping = False
    up = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(proc.poll() is None for proc in procs):
        up = up or ready()
        time.sleep(0.2)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    if not up and not stopping:
        click.echo("Error: eventdesk did not start (its log is above)", err=True)
        sys.exit(1)
    sys.exit(max((proc.returncode or 0) for proc in procs) if not stopping else 0)


if __name__ == "__main__":
    main()
