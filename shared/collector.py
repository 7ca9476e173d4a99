"""Python's cyclic garbage collector in eventdesk's long-running processes.

A process's start leaves well over a hundred thousand objects that live as long as it does
(modules, classes, the ORM's mappers, pydantic's validators, settings). CPython's collector
walks them at every full collection, and with its default thresholds (700, 10, 10) it runs a
young collection whenever the container objects allocated outnumber those freed by 700: a
worker's run of a few hundred mails makes that happen thousands of times, and the full
collections it leads to grow with the process (bench/README.md, session 10).

So each process, once started (:func:`settle`), collects what is garbage already, then freezes
the rest: ``gc.freeze`` moves it out of the collector's sight for good (and, before a fork,
keeps a child from writing to those pages for the collector's bookkeeping); and the young
generation is collected at YOUNG_THRESHOLD instead of 700. Reference counting still frees
almost everything at once; a cycle made after the start waits a little longer to be found;
one that start-up objects form and drop later (a disposed engine) is never collected, a
bounded, one-time cost.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Call once a process has loaded its code and built its long-lived objects: in a process
    that forks children, before the fork, and again in each child after its own set-up."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
