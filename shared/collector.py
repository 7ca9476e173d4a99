"""Python's cyclic garbage collector in eventdesk's long-running processes.

A process's start leaves well over a hundred thousand objects that live as long as it does
(modules, classes, the ORM's mappers, pydantic's validators, settings). CPython's collector
walks them at every full collection, and with its default thresholds (700, 10, 10) it runs a
young collection every 700 container allocations: a worker's run of a few hundred mails
allocates millions, and the full collections it triggers grow with the process. Under a stream
of mail the collector was the worker's largest single cost (bench/README.md, session 10).

So each process, once started (:func:`settle`), freezes what it holds: ``gc.freeze`` moves it
out of the collector's sight for good (and, before a fork, keeps a child from writing to those
pages for the collector's bookkeeping), and the young generation is collected every
YOUNG_THRESHOLD allocations. Reference counting still frees almost everything at once, so
memory stays as it was; only the rare cycles wait a little longer to be found.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Call once a process has loaded its code and built its long-lived objects: in a process
    that forks children, before the fork, and again in each child after its own set-up."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
