"""Query parameters through the parsers event fields go through (shared/requests/fields.py).

A value they refuse is a 400 naming the parameter (api/errors.py answers :class:`BadQuery`),
never a 500 from the database: a NUL in a text filter fails PostgreSQL's statement, a year
10000 overflows, a 20-digit integer is no BIGINT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import request

T = TypeVar("T")


class BadQuery(Exception):
    pass


def argument(name: str, parse: Callable[[str], T]) -> T | None:
    """The parameter ``name`` parsed, or None when absent or blank; raises BadQuery."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        raise BadQuery(f"{name} {exc}") from None
