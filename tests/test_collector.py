"""The garbage collector of a settled process (shared/collector.py): what it held at start is
never walked again, the young generation is collected less often, and cycles are still found;
and the api's, the worker's and the listener's processes settle it. Each test runs in a
process of its own: settling is for good."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from gunicorn.config import Config

from shared.collector import YOUNG_THRESHOLD
from tests.conftest import REPO

SETTLED = "import gc\nprint(gc.get_freeze_count() > 0, gc.get_threshold()[0])\n"


def _run(script: str) -> list[str]:
    # No metrics exporters: their ports may be taken on this machine.
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True,
                          env={**os.environ, "EVENTDESK_WORKER_METRICS_PORT": "0",
                               "EVENTDESK_SMTP_METRICS_PORT": "0"})
    return done.stdout.split()


def test_a_settled_process_keeps_what_it_held_out_of_the_collectors_sight() -> None:
    frozen, threshold = _run(
        "import gc, shared.settings\n"
        "from shared.collector import settle\n"
        "settle()\n"
        "print(gc.get_freeze_count(), gc.get_threshold()[0])\n")
    assert int(frozen) > 10_000  # the modules it imported, their classes and functions
    assert int(threshold) == YOUNG_THRESHOLD


def test_a_settled_process_still_collects_the_cycles_it_makes_by_itself() -> None:
    [found] = _run(
        "import weakref\n"
        "from shared.collector import YOUNG_THRESHOLD, settle\n"
        "settle()\n"
        "class Node: pass\n"
        "node = Node(); node.me = node; gone = weakref.ref(node); del node\n"
        "kept = [[] for _ in range(2 * YOUNG_THRESHOLD)]  # enough to start a collection\n"
        "print(gone() is None)\n")
    assert found == "True"


@pytest.mark.parametrize("signal", ["worker_init", "worker_process_init"])
def test_the_workers_main_and_pool_processes_settle_it(signal: str) -> None:
    assert _run("import worker.app\n"
                f"from celery.signals import {signal}\n"
                f"{signal}.send(sender=None)\n" + SETTLED) == ["True", str(YOUNG_THRESHOLD)]


def test_the_apis_worker_processes_settle_it() -> None:
    assert "post_worker_init" in Config().settings  # a hook gunicorn knows, not a stray name
    assert _run("from api import gunicorn_conf\n"
                "gunicorn_conf.post_worker_init(None)\n" + SETTLED) == [
        "True", str(YOUNG_THRESHOLD)]


def test_the_smtp_listener_settles_it_before_serving() -> None:
    # Its event loop (asyncio's here, whose run_forever can be watched: uvloop's is C) runs to
    # start the server, then to serve: there it says what the collector is like, and stops.
    assert _run("import asyncio, gc\n"
                "runs, run = [], asyncio.BaseEventLoop.run_forever\n"
                "def serving(loop):\n"
                "    runs.append(loop)\n"
                "    if len(runs) != 2:\n"
                "        return run(loop)\n"
                "    print(gc.get_freeze_count() > 0, gc.get_threshold()[0])\n"
                "asyncio.BaseEventLoop.run_forever = serving\n"
                "from api import smtp\n"
                "smtp.new_loop = asyncio.new_event_loop\n"
                "smtp.serve('127.0.0.1', 0)\n") == ["True", str(YOUNG_THRESHOLD)]
