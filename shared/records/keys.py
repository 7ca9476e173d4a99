"""API keys: only a key's SHA-256 is stored; the plaintext is shown once, when it is created."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Account, ApiKey, Person, utcnow

# The largest id a database integer column holds; a longer string of digits is no id.
_MAX_ID_DIGITS = 18


class UnknownRecord(ValueError):
    """A key was asked for an account or person that does not exist (the message says which)."""


class Revoked(enum.Enum):
    NOW = "revoked"
    ALREADY = "already revoked"
    NO_SUCH_KEY = "no such key"


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
    hashed = hash_key(key)
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
