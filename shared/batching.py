"""Cutting a sequence into runs of bounded size, in order; running what threads hand in at once
as one group; passing on what threads hand in, in lots, at a bounded rate."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def runs(items: Iterable[T], weight: Callable[[T], int], limit: int) -> list[list[T]]:
    """``items`` in order, cut into runs weighing at most ``limit`` together.

    An item is never split: one heavier than the limit makes a run of its own.
    """
    cut: list[list[T]] = []
    load = 0
    for item in items:
        heavy = weight(item)
        if not cut or load + heavy > limit:
            cut.append([])
            load = 0
        cut[-1].append(item)
        load += heavy
    return cut


class _Waiter(Generic[T]):
    __slots__ = ("done", "error", "item", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.error: BaseException | None = None
        # Held from the start; released once, to wake its waiting thread: done, or to lead.
        self.wake = threading.Lock()
        self.wake.acquire()


class GroupRunner(Generic[T]):
    """Work that threads hand in at the same moment done as one group (a group commit).

    The first thread to arrive runs ``work`` on its item with all that waits, and those that
    arrive meanwhile wait for that run to end; then the oldest of them runs the next group with
    everything that gathered. No thread waits for a timer, so a lone caller pays nothing, and
    under load the groups grow by themselves. The leading role is a baton, handed to the oldest
    waiting thread or put down; each waiting thread is woken exactly once, its item done or
    holding the baton.

    ``work`` gives each item its outcome (on the item: the runner keeps none). If it raises,
    every thread of the group raises that error from :meth:`submit`.
    """

    def __init__(self, work: Callable[[list[T]], None]) -> None:
        self._work = work
        self._guard = threading.Lock()
        self._waiting: list[_Waiter[T]] = []
        self._busy = False

    def submit(self, item: T) -> None:
        """Returns once ``work`` has run on a group holding ``item``."""
        waiter = _Waiter(item)
        with self._guard:
            waits = self._busy
            if waits:
                self._waiting.append(waiter)
            self._busy = True
        if waits:
            waiter.wake.acquire()
        if not waiter.done:  # this thread holds the baton
            self._lead(waiter)
        if waiter.error is not None:
            raise waiter.error

    def _lead(self, waiter: _Waiter[T]) -> None:
        with self._guard:
            group, self._waiting = [waiter, *self._waiting], []
        try:
            self._work([member.item for member in group])
        except BaseException as exc:
            for member in group:
                member.error = exc
        finally:
            for member in group:
                member.done = True
            with self._guard:
                successor = self._waiting.pop(0) if self._waiting else None
                self._busy = successor is not None
            for member in group[1:]:
                member.wake.release()
            if successor is not None:
                successor.wake.release()


class Coalescer(Generic[T]):
    """Items that threads hand in, passed on to ``send`` in lots: one lot every ``interval``
    seconds at most.

    Items handed in after a quiet interval go at once, in the caller's thread (or where it
    sends them: :meth:`gather`), so a trickle waits for nothing. Those handed in within
    ``interval`` of the last lot gather, and go together when it has passed, from a sender
    thread that lives while they keep coming (one thread for a stream: ``send`` may keep a
    connection a thread). So a stream costs one ``send`` an interval, whatever its rate. The
    thread is not a daemon: a process that exits normally sends what gathered before it ends.
    What ``send`` raises there loses that lot (``send`` should handle its own errors): it goes
    to ``threading.excepthook``, and the thread goes on with the next.
    """

    def __init__(self, send: Callable[[list[T]], None], interval: float) -> None:
        self._send = send
        self._interval = interval
        self._guard = threading.Lock()
        self._gathered: list[T] = []
        self._sending = False  # a sender thread runs, and takes what is handed in
        self._last = float("-inf")

    def add(self, items: Sequence[T]) -> None:
        lot = self.gather(items)
        if lot is not None:
            self._send(lot)

    def gather(self, items: Sequence[T]) -> list[T] | None:
        """:meth:`add`, but a lot to go at once is returned, for the caller to ``send`` where
        it will (an event loop: in its thread pool); None when there is none."""
        if not items:
            return None
        with self._guard:
            self._gathered.extend(items)
            if self._sending:
                return None
            if time.monotonic() < self._last + self._interval:
                try:
                    threading.Thread(target=self._sender, name="coalescer").start()
                except RuntimeError:  # no thread to be had (a process limit): send at once
                    return self._take()
                self._sending = True
                return None
            return self._take()

    def _take(self) -> list[T]:
        lot, self._gathered = self._gathered, []
        self._last = time.monotonic()
        return lot

    def _sender(self) -> None:
        try:
            while True:
                # A rate, not a wait for an event: what comes meanwhile goes in the next lot.
                time.sleep(max(0.0, self._last + self._interval - time.monotonic()))
                with self._guard:
                    if not self._gathered:  # the stream has ended: the next item goes at once
                        self._sending = False
                        return
                    lot = self._take()
                try:
                    self._send(lot)
                except Exception:  # that lot's: the thread goes on with the next
                    threading.excepthook(threading.ExceptHookArgs(
                        (*sys.exc_info(), threading.current_thread())))
        except BaseException:
            with self._guard:
                self._sending = False
            raise
