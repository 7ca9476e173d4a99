"""``eventdesk``: one command for every role and chore.

The roles (api, worker) run as processes started by module path, so the CLI imports neither.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from shared.settings import get_settings

REPO = Path(__file__).resolve().parents[1]
DEMO_FILE = REPO / "examples" / "demo.yaml"
# Threads per api process: they mostly wait on the broker's answer, and the more requests a process
# has in hand at once, the more of them share one message (group commit, shared/intake/queueing.py).
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
    from shared.records.importer import import_records, load_file

    with session_scope() as session:
        return import_records(session, load_file(path))


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
    """Create a key and print it; only its hash is stored, so this is the one chance to copy it."""
    from shared.db.engine import session_scope
    from shared.records.keys import create_key

    with session_scope() as session:
        key = create_key(session, account, name, person_id=person_id)
    click.echo(key)


@keys.command("revoke")
@click.argument("key_or_id")
def keys_revoke(key_or_id: str) -> None:
    """Revoke a key, given the key itself or its id."""
    from shared.db.engine import session_scope
    from shared.records.keys import revoke_key

    with session_scope() as session:
        if not revoke_key(session, key_or_id):
            raise click.ClickException("no such key")
    click.echo("revoked")


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
    """Run Celery beat: the notify sweeper's clock. Run exactly one per deployment."""
    os.execv(sys.executable, beat_command(get_settings().log_level))  # noqa: S606


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="HTTP API port")
@click.option("--smtp-port", default=2525, show_default=True, help="SMTP port (Mail API)")
@click.option("--demo", is_flag=True, help=f"Load the demo records ({DEMO_FILE.name}).")
@click.option("--concurrency", default=2, show_default=True, help="worker processes")
def run(host: str, port: int, smtp_port: int, demo: bool, concurrency: int) -> None:
    """Run the whole service: migrate, then the API, the SMTP listener and a worker, until Ctrl-C.

    With no configuration it uses SQLite and kombu's SQLAlchemy transport on SQLite, both in
    ./.eventdesk/, so nothing else has to be installed.
    """
    from shared.db.migrate import upgrade
    from shared.publish import declare_queues

    settings = get_settings()
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
    click.echo(f"eventdesk listening on http://{host}:{port} and smtp://{host}:{smtp_port}"
               "  (Ctrl-C stops)")
    _supervise(procs)


def _supervise(procs: list[subprocess.Popen[Any]]) -> None:
    """Wait until a child exits or we are told to stop; then stop every child."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(proc.poll() is None for proc in procs):
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
    sys.exit(max((proc.returncode or 0) for proc in procs) if not stopping else 0)


@main.group()
def bench() -> None:
    """Benchmarks (they print figures; they are not tests)."""


def _bench_main(name: str, args: tuple[str, ...]) -> None:
    """Run ``bench/<name>.py``'s ``main`` with the arguments as given (bench/ is not installed)."""
    import importlib

    sys.path.insert(0, str(REPO))
    sys.exit(importlib.import_module(f"bench.{name}").main(list(args)))


@bench.command("intake", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_intake(args: tuple[str, ...]) -> None:
    """The front door against a bare Flask + Redis baseline (see bench/intake.py)."""
    _bench_main("intake", args)


@bench.command("e2e", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_e2e(args: tuple[str, ...]) -> None:
    """Events posted until processed on PostgreSQL, against a no-op Celery worker (bench/e2e.py)."""
    _bench_main("e2e", args)


if __name__ == "__main__":
    main()
