"""Event matching (4me Events API; DESIGN 4.4): a storm of one event makes one request.

An event matches an **open** request (not completed or declined) of the same account **created
within the last 24 hours** that has
- when the event relates a CI: the same source, service instance and CI (key ``ci``);
- otherwise: the same source, subject, note and requested_for (key ``subject``).

A matched request is updated instead of a new one created: the event's note is added only when
its text is not already a note of the request, and only completion_reason,
desired_completion_at, downtime_start_at, downtime_end_at, status, waiting_until, team and
member may change, and only when the event sets them itself (a default never changes a request),
with one exception that completes the request as the create path would: an update that leaves
the request in a status needing a member (accepted, in_progress, ...) while it has none sets
the member the event's draft has (the sender, or the workflow manager), as creating a request
with that status would. The team stays as it is: a matched request already has one.

A mail (``Draft.mail``) is matched by the Mail API's variant (seed ``4me-mail-api.txt``, "Event
matching"): its CI key holds requested_for too (account, source, requested_for, service instance,
CI); its subject key holds the mail's body below the parameters as the note (the note written
also lists the attachments). A matched request is never changed by a mail (parameters never
update an existing request); its note is added when the mail has attachments, or on the CI key
when its text is new; on the subject key, whose note is the key's, only with attachments. A
blank body without attachments adds nothing. Mail keys are hashed apart from the Events API's,
so an event never matches a mail's request nor the other way round.

The key is hashed into ``requests.match_key``. Correctness under concurrency comes from the
caller: on PostgreSQL it takes a transaction-scoped advisory lock per key before looking
(shared/transactions/store.py); SQLite serialises writers.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, Literal

from shared.requests.defaults import STATUSES_NEEDING_MEMBER, Draft

WINDOW = timedelta(hours=24)
CLOSED_STATUSES = frozenset({"completed", "declined"})
MatchKind = Literal["ci", "subject"]
REASONS: dict[str, str] = {
    "ci": "open request created within 24 h with the same account, source, service instance "
          "and CI",
    "subject": "open request created within 24 h with the same account, source, subject, note "
               "and requested_for",
}
MAIL_REASONS: dict[str, str] = {
    "ci": "open request created within 24 h with the same account, source, requested_for, "
          "service instance and CI",
    "subject": "open request created within 24 h with the same account, source, "
               "requested_for, subject and note",
}
# Request column -> the event fields that set it explicitly.
UPDATABLE: dict[str, tuple[str, ...]] = {
    "completion_reason": ("completion_reason",),
    "desired_completion_at": ("desired_completion_at",),
    "downtime_start_at": ("downtime_start_at",),
    "downtime_end_at": ("downtime_end_at",),
    "status": ("status",),
    "waiting_until": ("waiting_until",),
    "team_id": ("team", "team_id"),
    "member_id": ("member", "member_id"),
}


def _digest(*parts: object) -> str:
    text = "\x1f".join("" if part is None else str(part) for part in parts)
    return hashlib.sha256(text.encode()).hexdigest()


def match_key(draft: Draft) -> tuple[MatchKind, str]:
    mail = draft.mail
    if draft.ci_id is not None:
        if mail is not None:
            return "ci", _digest("mail-ci", draft.account_id, draft.source,
                                 draft.requested_for_id, draft.service_instance_id, draft.ci_id)
        return "ci", _digest("ci", draft.account_id, draft.source, draft.service_instance_id,
                             draft.ci_id)
    if mail is not None:
        return "subject", _digest("mail-subject", draft.account_id, draft.source, draft.subject,
                                  mail.body, draft.requested_for_id)
    return "subject", _digest("subject", draft.account_id, draft.source, draft.subject,
                              draft.note, draft.requested_for_id)


def match_reason(draft: Draft, kind: MatchKind) -> str:
    return (REASONS if draft.mail is None else MAIL_REASONS)[kind]


def adds_note(draft: Draft, kind: MatchKind, digest: str, notes: set[str]) -> bool:
    """Whether a matched request gets the note whose text hash is ``digest`` (module doc)."""
    if draft.mail is None:
        return digest not in notes
    return draft.mail.attachments or (kind == "ci" and digest not in notes)


def note_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def can_match(status: str, created_at: datetime, now: datetime) -> bool:
    return status not in CLOSED_STATUSES and now - created_at <= WINDOW


def changes(draft: Draft, current: dict[str, Any]) -> dict[str, Any]:
    """The updatable fields the event sets explicitly and that differ from the request's (a
    mail's: none)."""
    found: dict[str, Any] = {}
    if draft.mail is not None:
        return found
    for column, sources in UPDATABLE.items():
        if not draft.explicit.intersection(sources):
            continue
        value = getattr(draft, column)
        if value is not None and value != current.get(column):
            found[column] = value
    status = found.get("status", current.get("status"))
    if (status in STATUSES_NEEDING_MEMBER and found.get("member_id", current.get("member_id"))
            is None and draft.member_id is not None):
        found["member_id"] = draft.member_id
    return found
