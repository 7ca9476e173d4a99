"""HTTP load generators for the benchmarks: ``wrk`` when installed, else a pure-Python client.

Both keep a fixed number of HTTP/1.1 keep-alive connections busy for a fixed time, each sending
the same POST again as soon as the previous answer is complete (a closed loop), and both report
the same figures: responses with status 200, other statuses, socket errors, latency percentiles,
and the CPU time the generator itself used (this machine's cores are shared with the servers).
The other mode, ``run_each``, POSTs each body of a list exactly once and stops (bench/e2e.py).

``wrk`` (Debian package ``wrk``) is a C event loop. Measured on the 2-core machine against the
baseline app: wrk ~60-80 µs of CPU per request, most of it kernel time of the loopback TCP that any
client pays (its own user time is ~20 µs); the Python client (asyncio protocols, no per-request
coroutine) ~190 µs, so with it the servers get less CPU and the figures are a little lower. It
exists so that the benchmark always runs; wrk is preferred.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

WRK = "wrk"
PYTHON = "python"


@dataclass(frozen=True)
class Target:
    """One request, sent again and again."""

    host: str
    port: int
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def request_bytes(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(self.body)}",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True)
class RunResult:
    generator: str
    duration_s: float  # measured wall time of the run
    ok: int  # responses with status 200
    non_ok: dict[int, int]  # other statuses -> count
    errors: int  # connect/read/write errors and timeouts
    p50_ms: float
    p99_ms: float
    cpu_s: float  # CPU time used by the load generator itself

    @property
    def non_ok_total(self) -> int:
        return sum(self.non_ok.values())

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / self.duration_s if self.duration_s > 0 else 0.0


def wrk_path() -> str | None:
    return shutil.which(WRK)


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return ""
    # ``wrk --version`` prints its banner and usage, and exits 1.
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"wrk\s+(\S+)", proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"


def choose(preference: str) -> str:
    """``auto`` -> wrk if installed, else python. Raises if ``wrk`` is asked for and missing."""
    if preference == PYTHON:
        return PYTHON
    if wrk_path() is not None:
        return WRK
    if preference == WRK:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    return PYTHON


def effective_seconds(generator: str, seconds: float) -> float:
    """How long a run of ``seconds`` lasts: wrk takes whole seconds only."""
    return float(max(1, math.ceil(seconds))) if generator == WRK else seconds


def run(
    generator: str, target: Target, duration_s: float, connections: int, timeout_s: float = 10.0
) -> RunResult:
    if generator == WRK:
        return run_wrk(target, duration_s, connections, timeout_s)
    return run_python(target, duration_s, connections, timeout_s)


def run_each(
    generator: str, target: Target, bodies: Sequence[bytes], connections: int, *,
    timeout_s: float = 30.0, max_seconds: float = 3600.0,
) -> RunResult:
    """POST each of ``bodies`` exactly once to ``target`` (whose own body is unused), then stop.

    ``connections`` keep-alive connections (never more than there are bodies) share the list
    evenly; ``duration_s`` of the result is the time until the last answer.
    """
    if not bodies:
        raise ValueError("run_each needs at least one body")
    connections = max(1, min(connections, len(bodies)))
    if generator == WRK:
        return run_wrk_each(target, bodies, connections, timeout_s, max_seconds)
    requests = [
        Target(target.host, target.port, target.path, body, target.headers).request_bytes()
        for body in bodies
    ]
    return run_python(target, max_seconds, connections, timeout_s, requests=requests)


# --- wrk ------------------------------------------------------------------------------------

# Both modes: count the answers per thread, and print them merged as one JSON line at the end.
# A mode's header sets the request and may define prepare() (run by init) and answered_one().
_WRK_COMMON = """
local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  other = {}
  answered = 0
  if prepare then prepare() end
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    other[status] = (other[status] or 0) + 1
  end
  answered = answered + 1
  if answered_one then answered_one() end
end

function done(summary, latency, requests)
  local total_ok = 0
  local parts = {}
  local merged = {}
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    for status, count in pairs(thread:get("other")) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  for status, count in pairs(merged) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    '\\nBENCH-RESULT {"ok":%d,"other":{%s},"duration_us":%d,"requests":%d,' ..
    '"errors":%d,"p50_us":%d,"p99_us":%d}\\n',
    total_ok, table.concat(parts, ","), summary.duration, summary.requests,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50.0), latency:percentile(99.0)))
end
"""

# run_each: one connection per thread, so a thread sends its next request only once the previous
# one is answered, and the next request is the one after the answers so far (request() must have
# no side effect: wrk calls it once more on the first thread, to check the script). Thread i takes
# lines i, i + threads, ... of the bodies file (one body a line); after its last answer it stops
# and says so (wrk's main thread sleeps for the whole -d: the caller interrupts it once every
# thread is done).
_WRK_EACH = """
function prepare()
  requests = {}
  local line_no = 0
  for line in io.lines(BODIES) do
    if line_no % THREADS == index then
      table.insert(requests, wrk.format(nil, nil, nil, line))
    end
    line_no = line_no + 1
  end
end

function request()
  return requests[math.min(answered + 1, #requests)]
end

function answered_one()
  if answered == #requests then
    io.write("BENCH-THREAD-DONE\\n")
    io.flush()
    wrk.thread:stop()
  end
end
"""
_THREAD_DONE = "BENCH-THREAD-DONE"


def _lua_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal whose closing bracket does not occur in it."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    # A newline right after the opening bracket would be dropped by Lua: start with the text.
    return f"[{eq}[{text}]{eq}]"


def _wrk_headers(target: Target) -> str:
    lines = ['wrk.method = "POST"'] + [
        f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}"
        for name, value in target.headers.items()
    ]
    return "\n".join(lines) + "\n"


def wrk_script(target: Target) -> str:
    return _wrk_headers(target) + f"wrk.body = {_lua_string(target.body.decode())}\n" + _WRK_COMMON


def wrk_each_script(target: Target, bodies_file: Path, threads: int) -> str:
    return (
        _wrk_headers(target) + f"BODIES = {_lua_string(str(bodies_file))}\nTHREADS = {threads}\n"
        + _WRK_EACH + _WRK_COMMON
    )


def _wrk_result(returncode: int, stdout: str, stderr: str, cpu_s: float) -> RunResult:
    match = re.search(r"^BENCH-RESULT (\{.*\})$", stdout, re.MULTILINE)
    if returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({returncode}): {stdout}\n{stderr}")
    data = json.loads(match.group(1))
    return RunResult(
        generator=WRK,
        duration_s=data["duration_us"] / 1e6,
        ok=int(data["ok"]),
        non_ok={int(status): int(count) for status, count in data["other"].items()},
        errors=int(data["errors"]),
        p50_ms=data["p50_us"] / 1000.0,
        p99_ms=data["p99_us"] / 1000.0,
        cpu_s=cpu_s,
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(target: Target, duration_s: float, connections: int, timeout_s: float) -> RunResult:
    path = wrk_path()
    if path is None:
        raise RuntimeError("wrk is not installed")
    # wrk takes whole seconds only.
    seconds = int(effective_seconds(WRK, duration_s))
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(wrk_script(target))
        before = _children_cpu_s()
        proc = subprocess.run(
            [
                path, "-t1", f"-c{connections}", f"-d{seconds}s",
                f"--timeout={math.ceil(timeout_s)}s", "-s", str(script), target.url,
            ],
            capture_output=True, text=True, check=False, timeout=seconds + timeout_s + 30,
        )
        cpu_s = _children_cpu_s() - before
    return _wrk_result(proc.returncode, proc.stdout, proc.stderr, cpu_s)


def run_wrk_each(
    target: Target, bodies: Sequence[bytes], connections: int, timeout_s: float,
    max_seconds: float,
) -> RunResult:
    """``run_each`` with wrk: ``connections`` threads of one connection each."""
    path = wrk_path()
    if path is None:
        raise RuntimeError("wrk is not installed")
    if any(b"\n" in body for body in bodies):
        raise ValueError("wrk reads one body a line: a body holds a newline")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        bodies_file = Path(tmp) / "bodies.txt"
        bodies_file.write_bytes(b"".join(body + b"\n" for body in bodies))
        script = Path(tmp) / "each.lua"
        script.write_text(wrk_each_script(target, bodies_file, connections))
        before = _children_cpu_s()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                path, f"-t{connections}", f"-c{connections}", f"-d{math.ceil(max_seconds)}s",
                f"--timeout={math.ceil(timeout_s)}s", "-s", str(script), target.url,
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        finished = 0
        lines: list[str] = []
        for line in proc.stdout:  # ends when wrk exits (after max_seconds at the latest)
            lines.append(line)
            finished += line.strip() == _THREAD_DONE
            if finished == connections:
                break
        elapsed = time.perf_counter() - started
        # SIGINT ends wrk's sleep, then it reports. A signal taken by a thread that is still
        # winding down is lost for the main thread's sleep: send it until wrk is gone.
        while proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                continue
        rest, stderr = proc.communicate()
        cpu_s = _children_cpu_s() - before
    result = _wrk_result(proc.returncode, "".join(lines) + rest, stderr, cpu_s)
    if finished < connections:
        raise RuntimeError(
            f"wrk: {connections - finished} of {connections} connections did not get all their "
            f"answers within {max_seconds:g} s (lost to socket errors: {result.errors})"
        )
    return RunResult(**{**result.__dict__, "duration_s": elapsed})


# --- pure Python ----------------------------------------------------------------------------


class _Stats:
    """The run's state: what to send, until when, and the answers so far.

    ``requests``: send each of them once (``run_each``) instead of ``request`` again and again.
    """

    def __init__(
        self, request: bytes, deadline: float, requests: Sequence[bytes] | None = None
    ) -> None:
        self.request = request
        self.deadline = deadline
        self.requests = requests
        self.sent = 0
        self.ok = 0
        self.non_ok: dict[int, int] = {}
        self.errors = 0
        self.latencies: list[float] = []

    @property
    def running(self) -> bool:
        more = self.requests is None or self.sent < len(self.requests)
        return more and time.perf_counter() < self.deadline

    def next_request(self) -> bytes:
        self.sent += 1
        return self.request if self.requests is None else self.requests[self.sent - 1]

    def record(self, status: int, started: float) -> None:
        now = time.perf_counter()
        if now > self.deadline:
            return  # answered after the end of the run: not counted, like wrk
        self.latencies.append(now - started)
        if status == 200:
            self.ok += 1
        else:
            self.non_ok[status] = self.non_ok.get(status, 0) + 1


_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]+)[^\r\n]*\r\n")


def _chunked_end(buf: bytes | bytearray, start: int) -> int:
    """The end of a chunked body starting at ``start``, or -1 while incomplete."""
    pos = start
    while True:
        match = _CHUNK_SIZE.match(buf, pos)
        if match is None:
            return -1
        size = int(match.group(1), 16)
        pos = match.end()
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # no trailers: "0\r\n\r\n"
            return -1 if end < 0 else end + 4
        pos += size + 2
        if pos > len(buf):
            return -1


class _Connection(asyncio.Protocol):
    """One keep-alive connection in a closed loop: send, read the whole answer, send again."""

    def __init__(self, stats: _Stats, closed: asyncio.Future[None]) -> None:
        self.stats = stats
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.started = 0.0
        self.waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        if not self.stats.running:
            self.transport.close()
            return
        self.started = time.perf_counter()
        self.waiting = True
        self.transport.write(self.stats.next_request())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buf[:head_end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        body_start = head_end + 4
        if "content-length" in headers:
            end = body_start + int(headers["content-length"])
            if len(self.buf) < end:
                return
        elif headers.get("transfer-encoding") == "chunked":
            end = _chunked_end(self.buf, body_start)
            if end < 0:
                return
        else:
            return  # body ends when the server closes: completed in connection_lost
        del self.buf[:end]
        self.waiting = False
        self.stats.record(status, self.started)
        assert self.transport is not None
        if headers.get("connection") == "close":
            self.transport.close()
        else:
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            head_end = self.buf.find(b"\r\n\r\n")
            if exc is None and head_end > 0:
                status = int(bytes(self.buf[: self.buf.find(b"\r\n")]).split(b" ", 2)[1])
                self.stats.record(status, self.started)
            elif self.stats.running:
                self.stats.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


async def _connection_loop(target: Target, stats: _Stats) -> None:
    loop = asyncio.get_running_loop()
    while stats.running:
        closed: asyncio.Future[None] = loop.create_future()
        try:
            transport, _protocol = await loop.create_connection(
                functools.partial(_Connection, stats, closed), target.host, target.port
            )
        except OSError:
            stats.errors += 1
            await asyncio.sleep(0.05)
            continue
        try:
            await closed
        finally:  # also when cancelled because a request hung
            transport.close()


async def _run_python(
    target: Target, duration_s: float, connections: int, timeout_s: float,
    requests: Sequence[bytes] | None,
) -> tuple[_Stats, float]:
    start = time.perf_counter()
    stats = _Stats(target.request_bytes(), start + duration_s, requests)
    tasks = [asyncio.create_task(_connection_loop(target, stats)) for _ in range(connections)]
    _done, pending = await asyncio.wait(tasks, timeout=duration_s + timeout_s)
    for task in pending:  # a request hung past the timeout
        stats.errors += 1
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    return stats, min(time.perf_counter(), stats.deadline) - start


def _percentile(sorted_values: list[float], percent: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(percent / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_python(
    target: Target, duration_s: float, connections: int, timeout_s: float,
    requests: Sequence[bytes] | None = None,
) -> RunResult:
    """Closed loop for ``duration_s``; with ``requests``: each once, ``duration_s`` at most."""
    cpu_before = time.process_time()
    stats, elapsed = asyncio.run(
        _run_python(target, duration_s, connections, timeout_s, requests)
    )
    cpu_s = time.process_time() - cpu_before
    latencies = sorted(stats.latencies)
    return RunResult(
        generator=PYTHON,
        duration_s=elapsed,
        ok=stats.ok,
        non_ok=dict(sorted(stats.non_ok.items())),
        errors=stats.errors,
        p50_ms=_percentile(latencies, 50.0) * 1000.0,
        p99_ms=_percentile(latencies, 99.0) * 1000.0,
        cpu_s=cpu_s,
    )
