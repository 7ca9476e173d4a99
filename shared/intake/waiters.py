"""How many callers of one api process may wait for their event's outcome (``Prefer: wait``).

A waiting caller holds one of the process's request threads for up to 30 s. Left unbounded, a
few callers waiting while the workers are behind take every thread, and events from everyone
else (a Webex POST that should get its 1002 in milliseconds) queue behind them. So waiting is a
privilege with a fixed number of slots per process; a caller who finds none taken free gets the
202 it would get without ``Prefer: wait`` and polls the transaction instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class WaitSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._taken = 0
        self._lock = threading.Lock()

    @property
    def taken(self) -> int:
        return self._taken

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """Yields whether a slot was free (and is now the caller's until the block ends).

        Never blocks: waiting for a slot would hold the very thread the slots protect.
        """
        with self._lock:
            granted = self._taken < self.limit
            if granted:
                self._taken += 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self._taken -= 1
