"""The benchmarks still run: a very short run of the intake bench's baseline app under gunicorn,
and of the end-to-end bench (api, worker, PostgreSQL) on a few events.

Only the machinery is checked (servers start, the load generator counts, every event is
processed, the figures come out); the figures themselves are not compared with any target.
"""

from __future__ import annotations

import fcntl
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bench import intake
from tests.conftest import REDIS_PORT

pytestmark = [pytest.mark.slow, pytest.mark.redis]

# The one Redis database the other tests leave (tests/conftest.py redis_db_url). The benches
# flush it, so the two runs take turns, whichever xdist workers they are on.
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/15"


def run_bench(main: Callable[[list[str]], int], args: list[str],
              capsys: pytest.CaptureFixture[str]) -> Any:
    """Run a bench's ``main`` with ``--json``; its report, once it exited 0."""
    status = main([*args, "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    return json.loads(out)


@pytest.fixture(autouse=True)
def _one_bench_at_a_time() -> Iterator[None]:
    with (Path(tempfile.gettempdir()) / "eventdesk-bench-smoke.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def test_baseline_intake_bench_reports_positive_figures(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_bench(intake.main, [
        "--apps", "baseline", "--loadgen", "python", "--duration", "0.5", "--warmup", "0",
        "--connections", "2", "--repeat", "1", "--redis-url", REDIS_URL,
    ], capsys)
    assert report["generator"] == "python"
    assert report["failed"] == ""
    assert "--workers" in report["gunicorn"]
    figures = {f["scenario"]: f for f in report["figures"]}
    assert set(figures) == set(intake.SCENARIOS)
    for scenario, f in figures.items():
        assert f["app"] == "baseline"
        assert f["requests"] > 0, scenario
        assert f["requests_per_s"] > 0
        assert f["events_per_s"] == pytest.approx(
            f["requests_per_s"] * intake.SCENARIOS[scenario]
        )
        assert 0 < f["p50_ms"] <= f["p99_ms"]
        assert f["rss_mib"] > 0
        assert f["server_cpu_percent"] > 0
        assert f["cpu_us_per_event"] > 0
        assert f["non_200"] == {}
        assert f["errors"] == 0
        # Every 200 was a real RPUSH (plus requests answered after the end of the run).
        assert f["queued_messages"] >= f["requests"]
    # Only the baseline ran: the ratios are not computed.
    assert report["ratios"]["eventdesk_single_vs_baseline_single"]["value"] is None


def test_report_table_and_ratios() -> None:
    report = intake.Report(
        generator="python", generator_version="3.11", gunicorn="--workers 2", duration_s=5.0,
        warmup_s=1.0, connections=16, repeat=1, cpus=2,
    )

    def figures(app: str, scenario: str, events_per_s: float) -> intake.Figures:
        events = intake.SCENARIOS[scenario]
        return intake.Figures(
            app=app, scenario=scenario, events_per_request=events, seconds=5.0,
            requests=int(events_per_s / events * 5), requests_per_s=events_per_s / events,
            events_per_s=events_per_s, p50_ms=1.0, p99_ms=2.0, non_200={"429": 3}, errors=0,
            rss_mib=100.0, server_cpu_percent=150.0, loadgen_cpu_percent=10.0,
            redis_cpu_percent=5.0, other_cpu_percent=0.0, cpu_us_per_event=1e6 / events_per_s,
            queued_messages=10,
            events_per_s_runs=[events_per_s],
        )

    report.figures = [
        figures("baseline", intake.SINGLE, 1000.0),
        figures("baseline", intake.BATCH, 50000.0),
        figures("eventdesk", intake.SINGLE, 900.0),
        figures("eventdesk", intake.BATCH, 8000.0),
    ]
    ratios = report.as_json()["ratios"]
    assert ratios["eventdesk_single_vs_baseline_single"] == {
        "value": pytest.approx(0.9), "target": 0.8, "met": True
    }
    assert ratios["eventdesk_batch100_vs_eventdesk_single"]["met"] is False
    assert set(ratios) == {
        "eventdesk_single_vs_baseline_single", "eventdesk_batch100_vs_eventdesk_single"
    }
    table = report.table()
    assert "0.90 (target >= 0.8: met)" in table
    assert "8.89 (target >= 10: MISSED)" in table
    assert "non-200 statuses: {'429': 3}" in table
    assert "WARNING" not in table
    report.figures[0].other_cpu_percent = 80.0
    assert "WARNING: other processes used up to 80% CPU" in report.table()


@pytest.mark.postgres
def test_e2e_bench_processes_every_event(capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg

    from bench import e2e

    report = run_bench(e2e.main, [
        # Enough events that each process's CPU spans several of the kernel's 10 ms ticks.
        "--events", "1000", "--scenarios", "storm", "--connections", "4",
        "--noop-messages", "200", "--stall-timeout", "20", "--start-timeout", "30",
        "--redis-url", REDIS_URL,
    ], capsys)
    assert report["failed"] == ""
    baseline = report["baseline"]
    assert baseline["drained"]
    assert baseline["messages"] == 200
    assert baseline["tasks_per_s"] > 0
    assert baseline["worker_rss_peak_mib"] > 0
    [f] = report["figures"]
    print(f)  # shown when an assertion fails
    assert f["scenario"] == "storm"
    assert f["bodies"] == f["answered_200"] == f["accepted"] == 1000
    assert f["non_200"] == {}
    assert f["errors"] == 0
    # Every accepted event was processed, and none failed; the storm made its requests only.
    assert f["completed"] == f["distinct_events"] == 1000  # each event posted once
    assert f["failed"] == 0
    assert f["queue_left"] == 0
    assert f["requests_created"] == f["expected_requests"] == 102  # 100 distinct + 2 CIs
    assert 0 < f["post_s"] <= f["e2e_s"]
    assert f["e2e_events_per_s"] == pytest.approx(1000 / f["e2e_s"], rel=0.01)  # s rounded
    assert f["post_events_per_s"] > 0
    assert f["vs_noop"] == pytest.approx(f["e2e_events_per_s"] / baseline["tasks_per_s"])
    assert f["worker_rss_peak_mib"] > 0
    assert f["api_rss_peak_mib"] > 0
    assert f["cpu_us_per_event"]["api"] > 0
    assert f["cpu_us_per_event"]["consumer"] > 0
    assert f["cpu_us_per_event"]["pool"] > 0
    assert f["cpu_us_per_event"]["postgres"] > 0
    assert f["target_events_per_s"] == 1000
    # The throwaway database is gone, and so is the bench's Redis data.
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (report["database"],)
        ).fetchone()
    assert row == (0,)
    assert redis.Redis.from_url(REDIS_URL).dbsize() == 0


def test_e2e_bench_with_a_preload(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import e2e

    report = run_bench(e2e.main, [
        "--events", "200", "--scenarios", "storm", "--connections", "4", "--noop-messages", "0",
        "--stall-timeout", "20", "--start-timeout", "30", "--redis-url", REDIS_URL,
        "--preload", "3000",
    ], capsys)
    empty, preloaded = report["figures"]
    assert (empty["scenario"], preloaded["scenario"]) == ("storm", "storm+pre")
    # Counted apart from the preload: the scenario's own transactions and requests only.
    assert preloaded["completed"] == preloaded["distinct_events"] == 200
    assert preloaded["requests_created"] == preloaded["expected_requests"] == 22
    preload = report["preload"]
    assert preload["storage"]["transactions"][0] == 3000
    assert preload["storage"]["requests"][0] == 300
    assert all(indexed for _, indexed, _, _ in preload["plans"]), preload["plans"]
    assert preload["purge"]["transactions"] > 0
    assert preload["purge"]["deliveries"] == preload["purge"]["attempts"] > 0


def test_e2e_scenario_events() -> None:
    from bench import e2e

    storm, storm_requests = e2e.scenario_events(e2e.STORM, 1000)
    distinct, distinct_requests = e2e.scenario_events(e2e.DISTINCT, 1000)
    assert storm_requests == 100 + 2
    assert distinct_requests == 1000
    assert len({json.dumps(event["parameters"], sort_keys=True) for event in storm}) == 100 + 4
    assert len({event["correlationid"] for event in storm + distinct}) == 1000
    batches = e2e.bodies(storm, 100)
    assert len(batches) == 10
    assert all(b"\n" not in body for body in batches)  # wrk reads one body a line
    assert [len(json.loads(body)["events"]) for body in e2e.bodies(storm[:250], 100)] == [
        100, 100, 50
    ]


@pytest.mark.postgres
def test_notify_bench_delivers_every_notification(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import notify

    report = run_bench(notify.main, [
        "--events", "200", "--per-body", "50", "--rate", "0", "--runs", "1",
        "--stall-timeout", "20", "--start-timeout", "30", "--redis-url", REDIS_URL,
    ], capsys)
    assert report["failed"] == ""
    ours, bare = report["runs"]
    print(ours, bare)  # shown when an assertion fails
    assert (ours["sender"], bare["sender"]) == ("eventdesk", "bare")
    assert ours["deliveries"] == bare["deliveries"] == 200
    assert ours["duplicates"] == 0
    assert 0 < ours["p50_s"] <= ours["p99_s"]
    assert ours["deliveries_per_s"] > 0
    assert report["ratio"] > 0
    for run in (ours, bare):
        # Measured, but possibly 0: 200 answers take about one 10 ms clock tick of CPU.
        assert run["cpu_us_per_delivery"]["receiver"] >= 0
    assert ours["cpu_us_per_delivery"]["worker"] > 0
    assert bare["cpu_us_per_delivery"]["bare"] > 0


def test_mail_bench_processes_every_message(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import mail

    # Enough messages that the sink's CPU spans several of the kernel's 10 ms ticks.
    report = run_bench(mail.main, ["--messages", "400", "--connections", "4", "--runs", "1",
                                   "--stall-timeout", "20", "--redis-url", REDIS_URL], capsys)
    sink, ours = report["runs"]
    print(sink, ours)  # shown when an assertion fails
    assert (sink["target"], ours["target"]) == ("sink", "eventdesk")
    for run in (sink, ours):
        assert (run["messages"], run["refused"], run["unprocessed"]) == (400, 0, 0)
        assert run["messages_per_s"] > 0
    assert ours["cpu_us_per_message"]["worker"] > 0
    assert sink["cpu_us_per_message"]["sink"] > 0
    assert report["ratio"] > 0


def test_mail_micro_bench_processes_every_message(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import mail_micro

    report = run_bench(mail_micro.main, ["--messages", "200", "--job", "60", "--runs", "1"],
                       capsys)
    assert (report["messages"], report["job"]) == (200, 60)
    assert report["worker_cpu_us"] > 0
    assert report["wall_us"] >= report["worker_cpu_us"]
