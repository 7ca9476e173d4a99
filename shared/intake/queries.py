"""Database reads of the intakes: event definitions (behind the Webex intake's cache) and the
outcome for ``Prefer: wait``. Failures are shared/db/lookup.py's: DatabaseUnreachable for an
outage, LookupUnavailable for any other database error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from shared.db.engine import session_scope
from shared.db.lookup import unavailable
from shared.db.models import EventDefinition
from shared.requests.shaping import Shaping, shaping_of
from shared.requests.views import get_request, to_json
from shared.transactions.schemas import TransactionView
from shared.transactions.views import transaction_view


@dataclass(frozen=True)
class DefinitionInfo:
    """What the Webex intake checks an event against."""

    mandatory: list[str]
    shaping: Shaping
    notifyurl: str | None = None


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
        raise unavailable(exc) from exc
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
        raise unavailable(exc) from exc


def find_request(account_id: str, request_id: int) -> dict[str, Any] | None:
    """The request, 4me-shaped JSON, for the 4me Events API's ``Prefer: wait``."""
    try:
        with session_scope() as session:
            view = get_request(session, account_id, request_id)
    except SQLAlchemyError as exc:
        raise unavailable(exc) from exc
    return None if view is None else to_json(view)
