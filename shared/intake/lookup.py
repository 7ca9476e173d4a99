"""Database loaders of the api (behind its caches, and for `Prefer: wait`); a database outage
becomes DatabaseUnreachable, any other database error LookupUnavailable.
"""

from __future__ import annotations

import hmac
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from shared.db.engine import database_unreachable, session_scope
from shared.db.models import ApiKey, EventDefinition
from shared.intake.service import (
    DatabaseUnreachable,
    DefinitionInfo,
    KeyInfo,
    LookupUnavailable,
)
from shared.requests.shaping import shaping_of
from shared.requests.views import get_request, to_json
from shared.transactions.schemas import TransactionView
from shared.transactions.service import transaction_view


def _unavailable(exc: SQLAlchemyError) -> LookupUnavailable:
    if database_unreachable(exc):
        return DatabaseUnreachable(str(exc))
    return LookupUnavailable(str(exc))


def find_key_info(hashed: str) -> KeyInfo | None:
    try:
        with session_scope() as session:
            key = session.scalars(
                select(ApiKey).where(ApiKey.key_hash == hashed, ApiKey.revoked_at.is_(None))
            ).first()
    except SQLAlchemyError as exc:
        raise _unavailable(exc) from exc
    if key is None or not hmac.compare_digest(key.key_hash, hashed):
        return None
    return KeyInfo(key_id=key.id, account_id=key.account_id, person_id=key.person_id,
                   notifyurl=key.notifyurl)


def find_definition_info(account_and_evtid: tuple[str, str]) -> DefinitionInfo | None:
    account_id, evtid = account_and_evtid
    try:
        with session_scope() as session:
            definition = session.scalars(
                select(EventDefinition).where(
                    EventDefinition.account_id == account_id, EventDefinition.evtid == evtid
                )
            ).first()
    except SQLAlchemyError as exc:
        raise _unavailable(exc) from exc
    if definition is None:
        return None
    return DefinitionInfo(
        mandatory=list(definition.mandatory), shaping=shaping_of(definition),
        notifyurl=definition.notifyurl,
    )


def find_transaction(account_id: str, transid: str) -> TransactionView | None:
    """The transaction's state, for the 4me Events API's ``Prefer: wait``."""
    try:
        with session_scope() as session:
            return transaction_view(session, account_id, transid)
    except SQLAlchemyError as exc:
        raise _unavailable(exc) from exc


def find_request(account_id: str, request_id: int) -> dict[str, Any] | None:
    """The request, 4me-shaped JSON, for the 4me Events API's ``Prefer: wait``."""
    try:
        with session_scope() as session:
            view = get_request(session, account_id, request_id)
    except SQLAlchemyError as exc:
        raise _unavailable(exc) from exc
    return None if view is None else to_json(view)
