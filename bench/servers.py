"""Start, probe, measure and stop the benchmarks' processes: apps under gunicorn, Celery workers."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from bench.loadgen import Target

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerError(Exception):
    """The server did not start, or died."""


@dataclass(frozen=True)
class GunicornSettings:
    """The server settings, the same for every app a benchmark compares."""

    workers: int = 2
    worker_class: str = "gthread"
    threads: int = 8
    # gthread keeps a keep-alive connection in the worker that accepted it, and a load generator
    # opens all its connections at once: one worker can win them all and the other idle (seen:
    # 660 instead of 1600 req/s). Capping each worker at its share of the connections spreads them
    # evenly. 0: gunicorn's default (1000).
    worker_connections: int = 0

    def args(self) -> list[str]:
        args = ["--workers", str(self.workers), "--worker-class", self.worker_class]
        if self.worker_class == "gthread":
            args += ["--threads", str(self.threads)]
        if self.worker_connections > 0:
            args += ["--worker-connections", str(self.worker_connections)]
        return args

    def describe(self) -> str:
        return " ".join(self.args())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: parse after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree: list[int] = []
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def probe(target: Target, timeout_s: float = 5.0) -> tuple[int, bytes] | None:
    """One request: its status and body, or None if nothing answered."""
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
    try:
        conn.request("POST", target.path, body=target.body, headers=target.headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Service:
    """A process the benchmark starts from the repository root, in a session of its own, with
    its output in a temporary log; measured with its children (RSS, CPU). Subclasses say what
    to run (``command``) and when it is ready."""

    kind = "process"

    def __init__(self, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.env = dict(env if env is not None else os.environ)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log")  # noqa: SIM115

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def launch(self) -> None:
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            self.command(), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def check_alive(self) -> None:
        if self.exited():
            raise ServerError(f"{self.name}: {self.kind} died\n{self.log_tail()}")

    def rss_mib(self) -> float:
        """Resident memory of the process and its children, summed."""
        return sum(rss_kib(pid) for pid in process_tree(self.pid)) / 1024.0

    def cpu_seconds(self) -> float:
        """CPU time used so far by the process and its children, summed."""
        return sum(cpu_seconds(pid) for pid in process_tree(self.pid))

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GunicornServer(Service):
    """``gunicorn APP`` on 127.0.0.1 and a free port."""

    kind = "gunicorn"

    def __init__(
        self, name: str, app: str, settings: GunicornSettings, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(name, env)
        self.app = app
        self.settings = settings
        self.port = free_port()

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", *self.settings.args(),
            "--bind", f"127.0.0.1:{self.port}", "--chdir", str(ROOT),
            "--log-level", "warning", "--timeout", "60", "--graceful-timeout", "5",
            self.app,
        ]

    def start(self, probe_target: Target, timeout_s: float = 30.0) -> tuple[int, bytes]:
        """Start, then wait until ``probe_target`` gets an HTTP answer; returns that answer."""
        self.launch()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.exited():
                raise ServerError(f"{self.name}: gunicorn exited\n{self.log_tail()}")
            answer = probe(probe_target, timeout_s=max(0.5, deadline - time.monotonic()))
            if answer is not None:
                return answer
            time.sleep(0.1)
        self.stop()
        raise ServerError(f"{self.name}: no answer within {timeout_s:.0f} s\n{self.log_tail()}")


class CeleryWorker(Service):
    """``celery -A APP worker`` (prefork) on the given queues."""

    kind = "celery worker"

    def __init__(
        self, name: str, app: str, queues: str, concurrency: int, *,
        env: dict[str, str] | None = None, loglevel: str = "WARNING",
    ) -> None:
        super().__init__(name, env)
        self.app = app
        self.queues = queues
        self.concurrency = concurrency
        self.loglevel = loglevel

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app, "worker", "-Q", self.queues,
            "--concurrency", str(self.concurrency), "--hostname", f"{self.name}-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", self.loglevel,
        ]

    def start(self, timeout_s: float = 30.0) -> None:
        """Start, then wait until the pool processes are forked (not yet that it consumes:
        the caller checks that with a message of its own)."""
        self.launch()
        deadline = time.monotonic() + timeout_s
        while len(process_tree(self.pid)) < self.concurrency + 1:
            if self.exited():
                raise ServerError(f"{self.name}: the celery worker exited\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.name}: no pool processes within {timeout_s:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.1)
