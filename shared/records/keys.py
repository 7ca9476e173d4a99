"""API keys: only a key's SHA-256 is stored; the plaintext is shown once, when it is created.

Authentication is here too (:class:`Keys`): every front door (Webex, 4me Events, Mail, the read
API) asks the same cache, so a key revoked or created is seen by all of them at once.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.cache import TTLCache
from shared.db.engine import session_scope
from shared.db.lookup import Outage, cached, unavailable
from shared.db.models import Account, ApiKey, Person, utcnow

# The largest id a database integer column holds; a longer string of digits is no id.
_MAX_ID_DIGITS = 18


class UnknownRecord(ValueError):
    """A key was asked for an account or person that does not exist (the message says which)."""


class Revoked(enum.Enum):
    NOW = "revoked"
    ALREADY = "already revoked"
    NO_SUCH_KEY = "no such key"


@dataclass(frozen=True)
class KeyInfo:
    """What a request's key says about its caller."""

    key_id: int
    account_id: str
    person_id: int | None
    notifyurl: str | None = None  # the key's default for its Webex events


class Keys:
    """Who a key belongs to, from a TTL cache in front of ``find`` (DESIGN 2: no database round
    trip on the hot path), stale for up to ``stale`` seconds while the database is unreachable
    (DESIGN 6)."""

    def __init__(self, find: Callable[[str], KeyInfo | None], *, ttl: float, stale: float = 0.0,
                 outage: Outage | None = None) -> None:
        self._cache: TTLCache[str, KeyInfo | None] = cached(find, ttl=ttl, stale=stale,
                                                            outage=outage)

    def authenticate(self, key: str | None) -> KeyInfo | None:
        """The caller of ``key``; None for no key, an unknown or a revoked one. Raises
        LookupUnavailable when the database could not say."""
        if not key:
            return None
        return self._cache.get(hash_key(key))


def find_key_info(hashed: str) -> KeyInfo | None:
    """The loader behind :class:`Keys`: the active key stored as ``hashed``."""
    try:
        with session_scope() as session:
            key = _active(session, hashed)
    except SQLAlchemyError as exc:
        raise unavailable(exc) from exc
    if key is None:
        return None
    return KeyInfo(key_id=key.id, account_id=key.account_id, person_id=key.person_id,
                   notifyurl=key.notifyurl)


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256, hex.

    Keys are long random strings, so a fast unsalted hash is enough, and it lets a key be found
    by its hash with one indexed lookup.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    account_id: str,
    name: str,
    key: str | None = None,
    person_id: int | None = None,
) -> str:
    """Store a key for ``account_id``; return its plaintext (a new random one if ``key`` is None).

    Idempotent: when a key with the same hash exists, its name and person are updated; its
    account and revocation are kept as they are (a revoked key is not brought back).
    Raises :class:`UnknownRecord` for an account that does not exist, or a person the worker
    would not find for it: one of the account or of its directory account, as names resolve.
    """
    account = session.get(Account, account_id)
    if account is None:
        raise UnknownRecord(f"no account {account_id!r}")
    if person_id is not None:
        person = session.get(Person, person_id)
        if person is None or person.account_id not in (account.id, account.directory_account_id):
            raise UnknownRecord(
                f"no person {person_id} in account {account_id!r} or its directory account"
            )
    plaintext = key if key is not None else _new_key()
    hashed = hash_key(plaintext)
    existing = session.scalars(select(ApiKey).where(ApiKey.key_hash == hashed)).first()
    if existing is None:
        session.add(ApiKey(account_id=account_id, name=name, key_hash=hashed, person_id=person_id))
    else:
        existing.name = name
        existing.person_id = person_id
    session.flush()
    return plaintext


def find_key(session: Session, key: str) -> ApiKey | None:
    """The active (not revoked) key whose plaintext is ``key``, or None."""
    return _active(session, hash_key(key))


def _active(session: Session, hashed: str) -> ApiKey | None:
    found = session.scalars(
        select(ApiKey).where(ApiKey.key_hash == hashed, ApiKey.revoked_at.is_(None))
    ).first()
    if found is None or not hmac.compare_digest(found.key_hash, hashed):
        return None
    return found


def list_keys(session: Session, account_id: str | None = None) -> list[ApiKey]:
    """Every key, revoked ones too, oldest first (of ``account_id`` only, when given)."""
    query = select(ApiKey).order_by(ApiKey.id)
    if account_id is not None:
        query = query.where(ApiKey.account_id == account_id)
    return list(session.scalars(query))


def revoke_key(session: Session, key_or_id: str | int) -> Revoked:
    """Revoke a key given by its plaintext or its id (an int, or a string of ASCII digits that
    is not itself a key)."""
    found: ApiKey | None = None
    if isinstance(key_or_id, str):
        found = session.scalars(
            select(ApiKey).where(ApiKey.key_hash == hash_key(key_or_id))
        ).first()
        if (found is None and key_or_id.isascii() and key_or_id.isdigit()
                and len(key_or_id) <= _MAX_ID_DIGITS):
            found = session.get(ApiKey, int(key_or_id))
    else:
        found = session.get(ApiKey, key_or_id)
    if found is None:
        return Revoked.NO_SUCH_KEY
    if found.revoked_at is not None:
        return Revoked.ALREADY
    found.revoked_at = utcnow()
    session.flush()
    return Revoked.NOW


def _new_key() -> str:
    """A random key that does not start with '-', which command lines (``eventdesk keys revoke
    KEY``, a shell's arguments) would read as an option."""
    while (key := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return key
