"""From validated 4me event fields to a complete request: resolution, template, defaults.

The defaults are the seeds' list (4me Mail API "Default values", shared with the Events API):

- category: ``incident`` when a service instance is related, else ``other``;
- impact: ``top`` when the category is ``incident``, else empty;
- created_by, requested_by, requested_for: the sender (the person the API key acts as);
- member: the workflow manager when the template is linked to a workflow template; else the
  sender when the status needs a member (:data:`STATUSES_NEEDING_MEMBER`) and none was given;
- service_instance: the first service instance of the CI;
- source: ``Event`` (``Email`` for mail); status: ``assigned``, or ``workflow_pending`` with a
  workflow template;
- team: the member's team; else the service instance's first line team, or its support team when
  it has no first line team or the sender belongs to either; else the service desk team of the
  support agreement that covers the requested_for person's account (or organization).
  An invalid team falls back to this chain.

A template's values apply first; explicit parameters override them. An empty value means "not
given" (so ``"requested_for": ""`` takes the default). References that do not resolve are listed
in ``unresolved`` (shown on the transaction) and left empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.records.directory import CIRef, PersonRef, Scope, ServiceInstanceRef, TemplateRef
from shared.requests.fields import DATETIME_FIELDS, parse_datetime, parse_id

if TYPE_CHECKING:
    from shared.transactions.schemas import MailFacts

STATUSES_NEEDING_MEMBER = frozenset(
    {"accepted", "in_progress", "waiting_for", "waiting_for_customer", "completed"}
)
DEFAULT_SOURCE = {"webex": "Event", "4me": "Event", "mail": "Email"}

# reference field (by name), its id field, the directory index for ids, and the name lookup
_REFERENCES: tuple[tuple[str, str, str, str], ...] = (
    ("requested_by", "requested_by_id", "people", "person"),
    ("requested_for", "requested_for_id", "people", "person"),
    ("member", "member_id", "people", "person"),
    ("team", "team_id", "teams", "team"),
    ("service_instance", "service_instance_id", "service_instances", "service_instance"),
    ("supplier", "supplier_id", "organizations", "organization"),
)
_ID_ONLY = (("template_id", "templates"), ("problem_id", "problems"),
            ("workflow_id", "workflows"))
_TEMPLATE_TEXT = ("subject", "category", "impact", "status", "note", "completion_reason")
_TEMPLATE_IDS = (("team_id", "teams"), ("member_id", "people"),
                 ("service_instance_id", "service_instances"), ("supplier_id", "organizations"))


@dataclass
class Draft:
    """Everything needed to create a request, or to update a matched one."""

    account_id: str
    subject: str | None = None
    category: str | None = None
    impact: str | None = None
    status: str = "assigned"
    completion_reason: str | None = None
    source: str | None = None
    source_id: str | None = None
    supplier_request_id: str | None = None
    team_id: int | None = None
    member_id: int | None = None
    requested_by_id: int | None = None
    requested_for_id: int | None = None
    created_by_id: int | None = None
    service_instance_id: int | None = None
    ci_id: int | None = None
    template_id: int | None = None
    supplier_id: int | None = None
    problem_id: int | None = None
    workflow_id: int | None = None
    desired_completion_at: datetime | None = None
    downtime_start_at: datetime | None = None
    downtime_end_at: datetime | None = None
    waiting_until: datetime | None = None
    note: str | None = None
    internal_note: str | None = None
    unresolved: dict[str, str] = field(default_factory=dict)
    # The fields the event itself set (not defaults): only these may change a matched request.
    explicit: frozenset[str] = frozenset()
    # A mail's facts: it is matched by the Mail API's variant (shared/requests/matching.py).
    mail: MailFacts | None = None

    def request_values(self) -> dict[str, Any]:
        names = (
            "subject", "category", "impact", "status", "completion_reason", "source",
            "source_id", "supplier_request_id", "team_id", "member_id", "requested_by_id",
            "requested_for_id", "created_by_id", "service_instance_id", "ci_id", "template_id",
            "supplier_id", "problem_id", "workflow_id", *DATETIME_FIELDS,
        )
        return {name: getattr(self, name) for name in names}


def _given(fields: dict[str, str | None], name: str) -> str | None:
    value = fields.get(name)
    return value if value else None


def _resolve(fields: dict[str, str | None], scope: Scope, draft: Draft) -> dict[str, Any]:
    """Resolve every reference the event gives; returns the records found, by field."""
    found: dict[str, Any] = {}
    for name, id_name, kind, lookup in _REFERENCES:
        by_id, by_name = _given(fields, id_name), _given(fields, name)
        if by_id:
            record = scope.by_id(kind, parse_id(by_id))
            if record is None:
                draft.unresolved[id_name] = by_id
        elif by_name:
            record = getattr(scope, lookup)(by_name)
            if record is None:
                draft.unresolved[name] = by_name
        else:
            continue
        if record is not None:
            found[name] = record
    for id_name, kind in _ID_ONLY:
        value = _given(fields, id_name)
        if value:
            record = scope.by_id(kind, parse_id(value))
            if record is None:
                draft.unresolved[id_name] = value
            else:
                found[id_name] = record
    ci = _resolve_ci(fields, scope, draft)
    if ci is not None:
        found["ci"] = ci
    return found


def _resolve_ci(fields: dict[str, str | None], scope: Scope, draft: Draft) -> CIRef | None:
    ci_id, label = _given(fields, "ci_id"), _given(fields, "ci")
    source, source_id = _given(fields, "ci_source"), _given(fields, "ci_sourceID")
    if ci_id:
        ci: CIRef | None = scope.by_id("cis", parse_id(ci_id))
        missing = ("ci_id", ci_id)
    elif label:
        ci, missing = scope.ci(label), ("ci", label)
    elif source_id:
        ci, missing = scope.ci_by_source(source, source_id), ("ci_sourceID", source_id)
    else:
        return None
    if ci is None:
        draft.unresolved[missing[0]] = missing[1]
    return ci


def _apply_template(template: TemplateRef, scope: Scope, found: dict[str, Any],
                    values: dict[str, Any]) -> None:
    """Template values for what the event did not set itself."""
    for name in _TEMPLATE_TEXT:
        if template.fields.get(name) and not values.get(name):
            values[name] = str(template.fields[name])
    if not values.get("subject"):
        values["subject"] = template.subject
    for id_name, kind in _TEMPLATE_IDS:
        name = id_name.removesuffix("_id")
        raw = template.fields.get(id_name)
        if raw is not None and name not in found:
            record = scope.by_id(kind, int(raw))
            if record is not None:
                found[name] = record


def _default_team(scope: Scope, found: dict[str, Any], sender: PersonRef | None,
                  requested_for: PersonRef | None) -> int | None:
    member: PersonRef | None = found.get("member")
    if member is not None and member.team_ids:
        return member.team_ids[0]
    si: ServiceInstanceRef | None = found.get("service_instance")
    if si is not None:
        sender_teams = set(sender.team_ids) if sender else set()
        in_si_teams = bool(sender_teams & {si.first_line_team_id, si.support_team_id})
        if si.first_line_team_id and not in_si_teams:
            return si.first_line_team_id
        if si.support_team_id:
            return si.support_team_id
    agreements = scope.home.agreements
    if requested_for is not None:
        for agreement in agreements:
            covers = (agreement.customer_account_id == requested_for.account_id
                      or (agreement.customer_organization_id is not None
                          and agreement.customer_organization_id
                          == requested_for.organization_id))
            if covers and agreement.service_desk_team_id:
                return agreement.service_desk_team_id
    for agreement in agreements:
        if agreement.customer_account_id in (None, scope.home.account_id) \
                and agreement.service_desk_team_id:
            return agreement.service_desk_team_id
    return None


def build_draft(
    fields: dict[str, str | None], scope: Scope, sender: PersonRef | None, channel: str,
    subject_fallback: str | None = None, *, mail: MailFacts | None = None,
) -> Draft:
    """Resolve ``fields`` in ``scope`` and apply the template and the defaults."""
    draft = Draft(account_id=scope.home.account_id, mail=mail)
    draft.explicit = frozenset(name for name, value in fields.items() if value)
    found = _resolve(fields, scope, draft)
    values: dict[str, Any] = {name: value for name, value in fields.items() if value}
    template: TemplateRef | None = found.get("template_id")
    if template is not None:
        _apply_template(template, scope, found, values)

    requested_for = found.get("requested_for") or sender
    ci: CIRef | None = found.get("ci")
    if "service_instance" not in found and ci is not None:
        si = scope.first(ci.service_instance_ids, "service_instances")
        if si is not None:
            found["service_instance"] = si
    category = values.get("category") or (
        "incident" if "service_instance" in found else "other")
    status = values.get("status") or (
        "workflow_pending" if template and template.workflow_template else "assigned")
    if "member" not in found:
        if template is not None and template.workflow_template and template.workflow_manager_id:
            manager = scope.by_id("people", template.workflow_manager_id)
            if manager is not None:
                found["member"] = manager
        elif status in STATUSES_NEEDING_MEMBER and sender is not None:
            found["member"] = sender

    def record_id(name: str) -> int | None:
        record = found.get(name)
        return record if isinstance(record, int) or record is None else record.id

    team = found.get("team")
    draft.team_id = team.id if team is not None else _default_team(
        scope, found, sender, requested_for)
    draft.subject = values.get("subject") or subject_fallback
    draft.category = category
    draft.impact = values.get("impact") or ("top" if category == "incident" else None)
    draft.status = status
    draft.completion_reason = values.get("completion_reason")
    draft.source = values.get("source") or DEFAULT_SOURCE.get(channel)
    draft.source_id = values.get("sourceID")
    draft.supplier_request_id = values.get("supplier_requestID")
    draft.member_id = record_id("member")
    draft.requested_by_id = record_id("requested_by") or (sender.id if sender else None)
    draft.requested_for_id = requested_for.id if requested_for else None
    draft.created_by_id = sender.id if sender else None
    draft.service_instance_id = record_id("service_instance")
    draft.ci_id = ci.id if ci else None
    draft.template_id = template.id if template else None
    draft.supplier_id = record_id("supplier")
    draft.problem_id = record_id("problem_id")
    draft.workflow_id = record_id("workflow_id")
    for name in DATETIME_FIELDS:
        raw = values.get(name)
        setattr(draft, name, parse_datetime(raw) if raw else None)
    draft.note = values.get("note")
    draft.internal_note = values.get("internal_note")
    return draft
