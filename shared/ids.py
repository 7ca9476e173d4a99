"""Transaction ids that the api can vouch for without a database.

The api answers 1002 before any database row exists (the worker writes it), yet a status lookup
should say "queued" rather than "not found" for an id we issued. So a transid carries a short
HMAC of its random part and the account: a valid MAC means "ours, for this account".

The random part begins with the second the id was issued (8 hex digits, under the MAC, so a
caller cannot forge it): once retention has removed a transaction, a lookup can tell "expired
from the log" from "queued" without keeping anything of the row (shared/retention/).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime
from functools import lru_cache

_TIME_HEX = 8
_RANDOM_HEX = 24
_MAC_HEX = 8
_HEX = re.compile("[0-9a-f]+")


def make_transid(secret: bytes, account_id: str, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    random_part = f"{issued:0{_TIME_HEX}x}" + secrets.token_hex((_RANDOM_HEX - _TIME_HEX) // 2)
    return random_part + _mac(secret, account_id, random_part)


def well_formed(transid: str) -> bool:
    """The shape of every transid issued: 32 lowercase hex digits. Anything else is no
    transaction's, and is answered without a lookup (a NUL would fail PostgreSQL's)."""
    return len(transid) == _RANDOM_HEX + _MAC_HEX and _HEX.fullmatch(transid) is not None


def issued_for(secret: bytes, account_id: str, transid: str) -> bool:
    # compare_digest refuses non-ASCII text with a TypeError: the shape is checked first.
    if not well_formed(transid):
        return False
    random_part, mac = transid[:_RANDOM_HEX], transid[_RANDOM_HEX:]
    return hmac.compare_digest(mac, _mac(secret, account_id, random_part))


def issued_at(transid: str) -> datetime | None:
    """When a transid was issued (only meaningful once :func:`issued_for` has vouched for it).

    Ids issued before the time was put in read as a random instant; ``None`` for one that
    cannot be a time at all.
    """
    try:
        return datetime.fromtimestamp(int(transid[:_TIME_HEX], 16), UTC)
    except ValueError:
        return None


@lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    # Keying HMAC costs as much as using it; the api keys it once and copies it per transid.
    return hmac.new(secret, digestmod=hashlib.sha256)


def _mac(secret: bytes, account_id: str, random_part: str) -> str:
    digest = _keyed(secret).copy()
    digest.update(f"{account_id}:{random_part}".encode())
    return digest.hexdigest()[:_MAC_HEX]
