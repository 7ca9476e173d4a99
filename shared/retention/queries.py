"""What the api reads of retention."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from shared.db.models import RetentionMark
from shared.retention.rules import TRANSACTION_LOG


def removed_before(session: Session) -> datetime | None:
    """The latest horizon a purge of the transaction log applied; None if none has run."""
    mark = session.get(RetentionMark, TRANSACTION_LOG)
    return mark.removed_before if mark else None
