"""The garbage collector of a settled process (shared/collector.py): what it held at start is
never walked again, the young generation is collected less often, and cycles are still found.
Each test runs in a process of its own: settling is for good."""

from __future__ import annotations

import subprocess
import sys

from shared.collector import YOUNG_THRESHOLD
from tests.conftest import REPO


def _run(script: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
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
