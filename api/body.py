"""Reading a request body within the size limit, with or without a Content-Length.

gunicorn passes a chunked body with no length; werkzeug's own limit then stops reading at the
limit and hands over what it read, so a body over it would be parsed (or a mail stored) cut
short. The event intakes and the Mail API read through :func:`read_limited` instead, which
tells "over the limit" from "done".
"""

from __future__ import annotations

from typing import Any


def read_limited(environ: dict[str, Any], limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (read no further then).

    Raises ValueError for a Content-Length that is no number of bytes.
    """
    declared = environ.get("CONTENT_LENGTH")
    if declared:
        if not (declared.isascii() and declared.isdigit()):
            raise ValueError("bad Content-Length")
        length = int(declared)
        return None if length > limit else environ["wsgi.input"].read(length)
    body: bytes = environ["wsgi.input"].read(limit + 1)  # chunked: no length given
    return None if len(body) > limit else body
