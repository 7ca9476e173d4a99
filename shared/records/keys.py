"""API keys: only a key's SHA-256 is stored; the plaintext is shown once, when it is created."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, utcnow


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
    """
    plaintext = key if key is not None else secrets.token_urlsafe(32)
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


def revoke_key(session: Session, key_or_id: str | int) -> bool:
    """Revoke a key given by its plaintext or its id (an int, or a string of digits that is not
    itself a key). True when an active key was found and is now revoked; False when there is no
    such key or it was already revoked.
    """
    found: ApiKey | None = None
    if isinstance(key_or_id, str):
        found = session.scalars(
            select(ApiKey).where(ApiKey.key_hash == hash_key(key_or_id))
        ).first()
        if found is None and key_or_id.isdigit():
            found = session.get(ApiKey, int(key_or_id))
    else:
        found = session.get(ApiKey, key_or_id)
    if found is None or found.revoked_at is not None:
        return False
    found.revoked_at = utcnow()
    session.flush()
    return True
