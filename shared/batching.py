"""Cutting a sequence into runs of bounded size, in order."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

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
