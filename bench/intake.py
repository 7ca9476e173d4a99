"""Intake benchmark: how fast the front door accepts events, against a bare Flask baseline.

Run from the repository root::

    python -m bench.intake [--duration 5] [--connections 16] [--json]
    python bench/intake.py ...

Both apps are started under gunicorn with the same settings, then each scenario is driven, one
app at a time (they share this machine's cores with the load generator), for a warm-up and
measured runs that alternate between the apps (``--repeat``; the median is shown), by a
closed-loop HTTP/1.1 keep-alive load generator (``wrk`` when installed, else a pure-Python
client):

- **baseline** (``bench.baseline_app``): validate with a small pydantic model, one raw Redis RPUSH.
- **eventdesk** (``api.wsgi:app``): the real api on a fresh SQLite database loaded with
  ``shared/records/demo.yaml``, publishing to a dedicated Redis database, rate limit out of the way.

Scenarios: single-event bodies and 100-event bodies. Only 200 answers count. Nothing drains the
queue during the run: this measures the accept rate. The Redis database is flushed before and
after each run. Exit status: 0 even when a target is missed (this is a benchmark, not a test);
non-zero when a server does not start or dies, or Redis is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from bench.loadgen import RunResult, Target
    from bench.servers import GunicornServer, GunicornSettings

ROOT = Path(__file__).resolve().parent.parent
PATH = "/resources/v1/events/externalevent/"
BASELINE = "baseline"
EVENTDESK = "eventdesk"
APPS = {BASELINE: "bench.baseline_app:app", EVENTDESK: "api.wsgi:app"}
SINGLE = "single"
BATCH = "batch100"
SCENARIOS = {SINGLE: 1, BATCH: 100}
TARGET_VS_BASELINE = 0.8  # eventdesk single-event events/s / baseline single-event events/s
TARGET_BATCH_GAIN = 10.0  # eventdesk 100-event events/s / eventdesk single-event events/s
# Above this much CPU (% of one core) used by processes outside the bench, the figures are noise:
# measured on the 2-core machine, neighbours at ~80% halved the eventdesk/baseline ratio.
NOISY_OTHER_CPU_PERCENT = 25.0
HUGE = "1000000000"  # rate limit and burst for the bench: measure intake, not limiting


def event(index: int) -> dict[str, Any]:
    return {
        "evtid": "server-down",
        "correlationid": f"c{index + 1}",
        "parameters": {
            "host": "db1", "subject": "Server Down", "source": "nagios", "sourceID": "42",
        },
    }


def body(events: int) -> bytes:
    return json.dumps({"events": [event(i) for i in range(events)]}, separators=(",", ":")).encode()


@dataclass
class Figures:
    app: str
    scenario: str
    events_per_request: int
    seconds: float
    requests: int  # 200 answers
    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    non_200: dict[str, int]
    errors: int
    rss_mib: float
    # CPU used during the measured run, in % of one core (this machine has os.cpu_count() cores):
    server_cpu_percent: float  # gunicorn master + workers
    loadgen_cpu_percent: float
    redis_cpu_percent: float
    other_cpu_percent: float  # everything else busy on the machine (neighbours, steal): noise
    cpu_us_per_event: float  # (server + Redis) CPU per accepted event

    queued_messages: int  # messages found in Redis after the run (>= requests, by in-flight ones)
    events_per_s_runs: list[float]  # every repeat; the figures above are the median one's


@dataclass
class Report:
    generator: str
    generator_version: str
    gunicorn: str
    duration_s: float
    warmup_s: float
    connections: int
    repeat: int
    cpus: int
    figures: list[Figures] = field(default_factory=list)
    failed: str = ""  # why the run stopped early

    def find(self, app: str, scenario: str) -> Figures | None:
        return next((f for f in self.figures if f.app == app and f.scenario == scenario), None)

    def ratios(self) -> dict[str, dict[str, float | bool | None]]:
        def ratio(num: float | None, den: float | None, target: float) -> dict[
            str, float | bool | None
        ]:
            value = num / den if num is not None and den else None
            met = None if value is None else value >= target
            return {"value": value, "target": target, "met": met}

        def rate(app: str, scenario: str) -> float | None:
            f = self.find(app, scenario)
            return f.events_per_s if f is not None else None

        return {
            "eventdesk_single_vs_baseline_single": ratio(
                rate(EVENTDESK, SINGLE), rate(BASELINE, SINGLE), TARGET_VS_BASELINE
            ),
            "eventdesk_batch100_vs_eventdesk_single": ratio(
                rate(EVENTDESK, BATCH), rate(EVENTDESK, SINGLE), TARGET_BATCH_GAIN
            ),
        }

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratios"] = self.ratios()
        return data

    def table(self) -> str:
        repeat = f", median of {self.repeat} runs" if self.repeat > 1 else ""
        lines = [
            f"load generator: {self.generator} {self.generator_version}".rstrip()
            + f", {self.connections} connections, {self.duration_s:g} s per scenario"
            + f" after {self.warmup_s:g} s warm-up{repeat}",
            f"gunicorn: {self.gunicorn}",
            "",
            f"{'':<{58}} CPU % of one core ({self.cpus} cores)",
            f"{'app':<10} {'scenario':<9} {'req/s':>8} {'events/s':>9} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'non-200':>7} {'errors':>6} {'RSS MiB':>7}  {'server':>6} "
            f"{'loadgen':>7} {'redis':>5} {'other':>5}  {'CPU µs/ev':>9} {'queued':>7}",
        ]
        for f in self.figures:
            lines.append(
                f"{f.app:<10} {f.scenario:<9} {f.requests_per_s:>8.1f} {f.events_per_s:>9.0f} "
                f"{f.p50_ms:>7.2f} {f.p99_ms:>7.2f} {sum(f.non_200.values()):>7} {f.errors:>6} "
                f"{f.rss_mib:>7.1f}  {f.server_cpu_percent:>6.0f} {f.loadgen_cpu_percent:>7.0f} "
                f"{f.redis_cpu_percent:>5.0f} {f.other_cpu_percent:>5.0f}  "
                f"{f.cpu_us_per_event:>9.1f} {f.queued_messages:>7}"
            )
            if f.non_200:
                lines.append(f"{'':<21}non-200 statuses: {f.non_200}")
            if len(f.events_per_s_runs) > 1:
                runs = ", ".join(f"{r:.0f}" for r in f.events_per_s_runs)
                lines.append(f"{'':<21}events/s of each run: {runs} (median shown)")
        lines += [
            "CPU µs/ev = (server + Redis) CPU per accepted event; queued = messages in Redis after",
            "the run; other = CPU busy outside the bench (other processes, steal).",
        ]
        busiest = max((f.other_cpu_percent for f in self.figures), default=0.0)
        if busiest > NOISY_OTHER_CPU_PERCENT:
            lines.append(
                f"WARNING: other processes used up to {busiest:.0f}% CPU during the runs: the"
                " figures are unreliable (low and noisy); rerun on a quiet machine."
            )
        lines.append("")
        labels = {
            "eventdesk_single_vs_baseline_single":
                "eventdesk single-event events/s / baseline single-event events/s",
            "eventdesk_batch100_vs_eventdesk_single":
                "eventdesk 100-event events/s / eventdesk single-event events/s",
        }
        for name, r in self.ratios().items():
            target = f"target >= {r['target']:g}"
            if r["value"] is None:
                lines.append(f"{labels[name]}: n/a ({target})")
            else:
                verdict = "met" if r["met"] else "MISSED"
                lines.append(f"{labels[name]}: {r['value']:.2f} ({target}: {verdict})")
        if self.failed:
            lines.append(f"\nstopped early: {self.failed}")
        return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.intake", description=__doc__.split("\n", 1)[0] if __doc__ else None
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (0: none)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto",
        help="load generator (auto: wrk when installed, else the Python client)",
    )
    parser.add_argument("--repeat", type=int, default=3,
                        help="measured runs per scenario and app, alternating apps (median)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--worker-class", default="gthread", help="gunicorn worker class")
    parser.add_argument("--threads", type=int, default=8,
                        help="threads per gthread worker (8: eventdesk api's default)")
    parser.add_argument(
        "--worker-connections", type=int, default=None,
        help="gthread: connections per worker (default: connections / workers, rounded up, "
        "so that the load is spread evenly; 0: gunicorn's default)",
    )
    parser.add_argument(
        "--apps", default=f"{BASELINE},{EVENTDESK}", help="comma-separated: baseline,eventdesk"
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/15",
        help="a Redis database the bench owns: it is flushed before and after each run",
    )
    parser.add_argument("--records", type=Path, default=ROOT / "shared" / "records" / "demo.yaml")
    parser.add_argument("--key", default="demo-key", help="the API key sent in the 'key' header")
    parser.add_argument("--start-timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    args.apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    unknown = set(args.apps) - set(APPS)
    if unknown:
        parser.error(f"unknown app(s): {', '.join(sorted(unknown))}")
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.repeat < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --connections and --repeat >= 1")
    if args.worker_connections is None:
        args.worker_connections = -(-args.connections // args.workers)
    return args


def prepare_eventdesk(data_dir: Path, records: Path) -> str:
    """A fresh SQLite database with the tables and the records; returns its URL."""
    from shared.db.engine import dispose_engines, session_scope
    from shared.db.migrate import upgrade
    from shared.records.importer import import_records, load_file

    url = f"sqlite:///{data_dir / 'eventdesk.sqlite'}"
    upgrade(url)
    with session_scope(url) as session:
        import_records(session, load_file(records))
    dispose_engines()
    return url


def app_env(app: str, data_dir: Path, redis_url: str, records: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTDESK_", "BENCH_"))}
    if app == BASELINE:
        env["BENCH_REDIS_URL"] = redis_url
        return env
    from bench.servers import ServerError

    try:
        database_url = prepare_eventdesk(data_dir, records)
    except Exception as exc:
        raise ServerError(f"{app}: preparing the database failed: {exc!r}") from exc
    env.update(
        EVENTDESK_DATABASE_URL=database_url,
        EVENTDESK_BROKER_URL=redis_url,
        EVENTDESK_DATA_DIR=str(data_dir),
        EVENTDESK_SECRET_KEY="bench-secret-key",
        EVENTDESK_RATE_LIMIT_PER_SECOND=HUGE,
        EVENTDESK_RATE_LIMIT_BURST=HUGE,
    )
    return env


def queued_messages(client: redis.Redis) -> int:
    """Messages in all the lists of the bench's Redis database (the queues)."""
    return sum(int(client.llen(key)) for key in client.scan_iter(_type="list"))


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far, steal included (from /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
    return busy / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


@dataclass(frozen=True)
class Measured:
    result: RunResult
    rss_mib: float
    server_cpu_s: float
    redis_cpu_s: float
    machine_cpu_s: float
    queued: int


def measure(
    server: GunicornServer, client: redis.Redis, generator: str, target: Target,
    args: argparse.Namespace,
) -> Measured:
    from bench import loadgen

    client.flushdb()
    server_cpu, redis_cpu, machine_cpu = (
        server.cpu_seconds(), redis_cpu_seconds(client), machine_cpu_seconds()
    )
    result = loadgen.run(generator, target, args.duration, args.connections)
    server_cpu, redis_cpu, machine_cpu = (
        server.cpu_seconds() - server_cpu, redis_cpu_seconds(client) - redis_cpu,
        machine_cpu_seconds() - machine_cpu,
    )
    server.check_alive()
    measured = Measured(
        result, server.rss_mib(), server_cpu, redis_cpu, machine_cpu, queued_messages(client)
    )
    client.flushdb()
    return measured


def figures(app: str, scenario: str, runs: list[Measured]) -> Figures:
    events = SCENARIOS[scenario]
    ranked = sorted(runs, key=lambda m: m.result.ok_per_s)
    m = ranked[(len(ranked) - 1) // 2]
    r = m.result
    # CPU of the wall time of the load generator's run (wrk measures its own duration).
    wall = r.duration_s

    def percent(seconds: float) -> float:
        return 100.0 * seconds / wall if wall > 0 else 0.0

    known = m.server_cpu_s + r.cpu_s + m.redis_cpu_s
    return Figures(
        app=app,
        scenario=scenario,
        events_per_request=events,
        seconds=round(r.duration_s, 3),
        requests=r.ok,
        requests_per_s=r.ok_per_s,
        events_per_s=r.ok_per_s * events,
        p50_ms=r.p50_ms,
        p99_ms=r.p99_ms,
        non_200={str(status): count for status, count in r.non_ok.items()},
        errors=r.errors,
        rss_mib=m.rss_mib,
        server_cpu_percent=percent(m.server_cpu_s),
        loadgen_cpu_percent=percent(r.cpu_s),
        redis_cpu_percent=percent(m.redis_cpu_s),
        other_cpu_percent=max(0.0, percent(m.machine_cpu_s - known)),
        cpu_us_per_event=(
            1e6 * (m.server_cpu_s + m.redis_cpu_s) / (r.ok * events) if r.ok else 0.0
        ),
        queued_messages=m.queued,
        events_per_s_runs=[run.result.ok_per_s * events for run in runs],
    )


def bench_apps(
    args: argparse.Namespace, *, settings: GunicornSettings, generator: str,
    client: redis.Redis, report: Report,
) -> None:
    from bench import loadgen
    from bench.servers import GunicornServer

    def target(server: GunicornServer, events: int) -> Target:
        return loadgen.Target(
            "127.0.0.1", server.port, PATH, body(events),
            {"Content-Type": "application/json", "key": args.key},
        )

    with ExitStack() as stack:
        servers: dict[str, GunicornServer] = {}
        for app in args.apps:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{app}-"))
            env = app_env(app, Path(tmp), args.redis_url, args.records)
            server = servers[app] = stack.enter_context(
                GunicornServer(app, APPS[app], settings, env))
            log(f"{app}: starting gunicorn {APPS[app]} on 127.0.0.1:{server.port}")
            status, answer = server.start(target(server, 1), timeout_s=args.start_timeout)
            if status != 200:
                log(f"{app}: WARNING: the probe request got {status}: {answer[:300]!r}")
        client.flushdb()
        for scenario, events in SCENARIOS.items():
            runs: dict[str, list[Measured]] = {app: [] for app in servers}
            for app, server in servers.items():
                if args.warmup > 0:
                    log(f"{app} {scenario}: warm-up {args.warmup:g} s")
                    loadgen.run(generator, target(server, events), args.warmup, args.connections)
                    server.check_alive()
            # The apps' runs alternate (both servers are up, the idle one uses no CPU), so a
            # machine that speeds up or slows down during the bench weighs on both alike.
            for i in range(args.repeat):
                for app, server in servers.items():
                    log(f"{app} {scenario}: run {i + 1}/{args.repeat}, {args.duration:g} s, "
                        f"{args.connections} connections")
                    runs[app].append(
                        measure(server, client, generator, target(server, events), args))
            report.figures += [figures(app, scenario, runs[app]) for app in servers]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import redis

    from bench import loadgen
    from bench.servers import GunicornSettings, ServerError

    settings = GunicornSettings(
        workers=args.workers, worker_class=args.worker_class, threads=args.threads,
        worker_connections=args.worker_connections if args.worker_class == "gthread" else 0,
    )
    try:
        generator = loadgen.choose(args.loadgen)
    except RuntimeError as exc:
        log(str(exc))
        return 2
    if generator == loadgen.PYTHON and args.loadgen == "auto":
        log("wrk not found (Debian: apt-get install wrk): using the Python load generator")
    version = loadgen.wrk_version() if generator == loadgen.WRK else sys.version.split()[0]
    report = Report(
        generator=generator,
        generator_version=version,
        gunicorn=settings.describe(),
        duration_s=loadgen.effective_seconds(generator, args.duration),
        warmup_s=loadgen.effective_seconds(generator, args.warmup) if args.warmup > 0 else 0.0,
        connections=args.connections,
        repeat=args.repeat,
        cpus=os.cpu_count() or 1,
    )
    log(f"load generator: {generator}; gunicorn {report.gunicorn}")
    client = redis.Redis.from_url(args.redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        log(f"Redis at {args.redis_url} is unreachable: {exc}")
        return 2
    status = 0
    try:
        bench_apps(args, settings=settings, generator=generator, client=client, report=report)
    except (ServerError, RuntimeError) as exc:  # a server, or the load generator, failed
        log(f"ERROR: {exc}")
        report.failed = str(exc).split("\n", 1)[0]
        status = 1
    finally:
        client.flushdb()
        client.close()
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table())
    return status


if __name__ == "__main__":
    if not __package__:  # run as a script: bench/ is on sys.path, the repository root is not
        sys.path[0] = str(ROOT)
    sys.exit(main())
