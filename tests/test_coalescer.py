"""Passing on what threads hand in, in lots, one lot an interval at most (shared/batching.py's
Coalescer): how mail intake queues its ``mail.process`` wake-up calls. A lone item goes at once
in its caller's thread (or where the caller sends it); a stream goes one lot an interval, from
one sender thread; a process that exits normally sends what gathered first."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from shared.batching import Coalescer
from tests.conftest import REPO, wait_until

INTERVAL = 0.5


class Sent:
    """What ``send`` received: each lot, the thread that sent it, and when."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.lots: list[list[int]] = []
        self.threads: list[str] = []
        self.times: list[float] = []
        self._fail_on = fail_on

    def __call__(self, lot: list[int]) -> None:
        if self._fail_on in lot:
            raise RuntimeError("broker gone")
        self.lots.append(lot)
        self.threads.append(threading.current_thread().name)
        self.times.append(time.monotonic())


def stream_ended() -> bool:
    return not any(thread.name == "coalescer" for thread in threading.enumerate())


def test_a_lone_item_is_sent_at_once_by_its_caller() -> None:
    sent = Sent()
    Coalescer(sent, INTERVAL).add([1, 2])
    assert sent.lots == [[1, 2]]
    assert sent.threads == [threading.current_thread().name]


def test_a_caller_that_sends_where_it_will_is_given_the_lot_to_go_at_once() -> None:
    """The SMTP listener's event loop: it sends such a lot from its thread pool."""
    sent = Sent()
    coalescer = Coalescer(sent, INTERVAL)
    assert coalescer.gather([1, 2]) == [1, 2]
    assert coalescer.gather([3]) is None  # within the interval: the sender thread's
    wait_until(lambda: sent.lots, 10, 0.01)
    assert sent.lots == [[3]]
    assert sent.threads == ["coalescer"]
    wait_until(stream_ended, 10, 0.01)


def test_items_within_the_interval_go_together_once_it_has_passed() -> None:
    sent = Sent()
    coalescer = Coalescer(sent, INTERVAL)
    coalescer.add([1])
    coalescer.add([2])
    coalescer.add([])
    coalescer.add([3, 4])
    assert sent.lots == [[1]]
    wait_until(lambda: len(sent.lots) == 2, 10, 0.01)
    assert sent.lots == [[1], [2, 3, 4]]
    assert sent.threads[1] == "coalescer"
    assert sent.times[1] - sent.times[0] >= INTERVAL


def test_once_a_stream_ends_the_next_item_is_sent_at_once_again() -> None:
    sent = Sent()
    coalescer = Coalescer(sent, INTERVAL)
    coalescer.add([1])
    coalescer.add([2])
    wait_until(lambda: len(sent.lots) == 2 and stream_ended(), 10, 0.01)
    coalescer.add([3])
    assert sent.lots == [[1], [2], [3]]
    assert sent.threads[2] == threading.current_thread().name


def test_a_send_that_fails_in_the_sender_thread_does_not_stop_later_lots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = Sent(fail_on=0)
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: errors.append(hook.exc_value))
    coalescer = Coalescer(sent, INTERVAL)
    coalescer.add([1])
    coalescer.add([0])
    wait_until(lambda: errors, 10, 0.01)
    assert [str(error) for error in errors] == ["broker gone"]
    coalescer.add([5])
    coalescer.add([6])
    wait_until(lambda: len(sent.lots) == 2, 10, 0.01)
    assert sent.lots == [[1], [5, 6]]
    assert sent.threads[1] == "coalescer"


def test_when_no_thread_can_be_started_the_items_go_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = Sent()
    coalescer = Coalescer(sent, INTERVAL)
    coalescer.add([1])

    def refused(_: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as limited:
        limited.setattr(threading.Thread, "start", refused)
        coalescer.add([2])
    assert sent.lots == [[1], [2]]
    coalescer.add([3])  # threads again: within the interval, so it waits for its end
    assert sent.lots == [[1], [2]]
    wait_until(lambda: len(sent.lots) == 3, 10, 0.01)
    assert sent.lots == [[1], [2], [3]]


def test_a_process_that_exits_sends_what_gathered_first() -> None:
    script = ("from shared.batching import Coalescer\n"
              "coalescer = Coalescer(print, 0.5)\n"
              "coalescer.add([1])\n"
              "coalescer.add([2, 3])\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == ["[1]", "[2, 3]"]
