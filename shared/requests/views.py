"""Requests and notes as the 4me REST API shows them (DESIGN 3.4; docs/api.md "Requests").

``GET /v1/requests/<id>``, ``GET /v1/requests``, ``GET /v1/requests/<id>/notes`` and the answer of
``POST /v1/events`` with ``Prefer: wait``. The shape follows 4me: references as ``{"id", "name"}``
(a template as ``{"id", "subject"}``, a problem or workflow as ``{"id"}``), timestamps as
``yyyy-mm-ddThh:mm:ssZ`` (UTC), blank values as null. 4me links configuration items to a request
separately; here a request has at most one CI, shown as ``"ci": {"id", "label", "name"}``.

The pydantic models below are what the endpoints answer and what the OpenAPI document shows.
:func:`request_view` and :func:`note_view` are pure; the ``list_*``/``get_*`` functions query with
the session they are given, a page at a time, with one query per kind of referenced record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from shared.db.models import (
    ConfigurationItem,
    Note,
    Organization,
    Person,
    Request,
    RequestTemplate,
    ServiceInstance,
    Team,
)


def format_timestamp(value: datetime | None) -> str | None:
    """``yyyy-mm-ddThh:mm:ssZ`` in UTC, as 4me writes its timestamps."""
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[
    datetime | None,
    PlainSerializer(format_timestamp, return_type=str | None),
    Field(description="UTC, yyyy-mm-ddThh:mm:ssZ", examples=["2026-11-23T09:37:03Z"]),
]


class Reference(BaseModel):
    id: int
    name: str | None = None


class TemplateReference(BaseModel):
    id: int
    subject: str | None = None


class CIReference(BaseModel):
    id: int
    label: str | None = None
    name: str | None = None


class IdReference(BaseModel):
    id: int


class CustomField(BaseModel):
    """A custom field of a UI extension, as 4me lists them (the Mail API's
    ``#custom_field_<id>``)."""

    id: str
    value: str


class RequestView(BaseModel):
    """A request, 4me-shaped (``sourceID`` and ``supplier_requestID`` are aliases)."""

    model_config = ConfigDict(serialize_by_alias=True)

    id: int
    subject: str | None = None
    category: str | None = None
    impact: str | None = None
    status: str
    completion_reason: str | None = None
    source: str | None = None
    source_id: str | None = Field(default=None, serialization_alias="sourceID")
    supplier_request_id: str | None = Field(default=None, serialization_alias="supplier_requestID")
    team: Reference | None = None
    member: Reference | None = None
    requested_by: Reference | None = None
    requested_for: Reference | None = None
    created_by: Reference | None = None
    service_instance: Reference | None = None
    supplier: Reference | None = Field(default=None, description="An organization.")
    template: TemplateReference | None = None
    ci: CIReference | None = Field(
        default=None, description="The configuration item the event related (4me links CIs "
        "separately; a request here has at most one).")
    problem: IdReference | None = None
    workflow: IdReference | None = None
    created_at: Timestamp
    updated_at: Timestamp
    desired_completion_at: Timestamp = None
    downtime_start_at: Timestamp = None
    downtime_end_at: Timestamp = None
    waiting_until: Timestamp = None
    custom_fields: list[CustomField] | None = None


class NoteView(BaseModel):
    id: int
    text: str
    internal: bool
    markdown: bool = Field(default=False, description="The text uses Text Formatting (the Mail "
                           "API's #markdown); else it is plain text.")
    time_spent: int | None = Field(default=None, description="Minutes (#time_spent).")
    person: Reference | None = Field(default=None, description="Not recorded: always null.")
    created_at: Timestamp


def to_json(view: BaseModel) -> dict[str, Any]:
    return view.model_dump(mode="json", by_alias=True)


@dataclass
class Names:
    """The names of the records a page of requests refers to, by kind and id."""

    people: dict[int, str] = field(default_factory=dict)
    teams: dict[int, str] = field(default_factory=dict)
    service_instances: dict[int, str] = field(default_factory=dict)
    organizations: dict[int, str] = field(default_factory=dict)
    templates: dict[int, str] = field(default_factory=dict)
    cis: dict[int, tuple[str | None, str]] = field(default_factory=dict)


def _blank(value: str | None) -> str | None:
    return value if value else None


def _ref(record_id: int | None, names: dict[int, str]) -> Reference | None:
    return None if record_id is None else Reference(id=record_id, name=names.get(record_id))


def request_view(row: Request, names: Names) -> RequestView:
    ci = None
    if row.ci_id is not None:
        label, name = names.cis.get(row.ci_id, (None, None))
        ci = CIReference(id=row.ci_id, label=_blank(label), name=_blank(name))
    return RequestView(
        id=row.id, subject=_blank(row.subject), category=_blank(row.category),
        impact=_blank(row.impact), status=row.status,
        completion_reason=_blank(row.completion_reason), source=_blank(row.source),
        source_id=_blank(row.source_id), supplier_request_id=_blank(row.supplier_request_id),
        team=_ref(row.team_id, names.teams), member=_ref(row.member_id, names.people),
        requested_by=_ref(row.requested_by_id, names.people),
        requested_for=_ref(row.requested_for_id, names.people),
        created_by=_ref(row.created_by_id, names.people),
        service_instance=_ref(row.service_instance_id, names.service_instances),
        supplier=_ref(row.supplier_id, names.organizations),
        template=None if row.template_id is None else TemplateReference(
            id=row.template_id, subject=names.templates.get(row.template_id)),
        ci=ci,
        problem=None if row.problem_id is None else IdReference(id=row.problem_id),
        workflow=None if row.workflow_id is None else IdReference(id=row.workflow_id),
        created_at=row.created_at, updated_at=row.updated_at,
        desired_completion_at=row.desired_completion_at,
        downtime_start_at=row.downtime_start_at, downtime_end_at=row.downtime_end_at,
        waiting_until=row.waiting_until, custom_fields=_custom_fields(row.references),
    )


def _custom_fields(references: dict[str, Any] | None) -> list[CustomField] | None:
    values = (references or {}).get("custom_fields")
    if not isinstance(values, dict) or not values:
        return None
    return [CustomField(id=str(name), value=str(value)) for name, value in values.items()]


def note_view(row: Note) -> NoteView:
    return NoteView(id=row.id, text=row.text, internal=row.internal, markdown=row.markdown,
                    time_spent=row.time_spent, created_at=row.created_at)


def _ids(values: Iterable[int | None]) -> set[int]:
    return {value for value in values if value is not None}


def load_names(session: Session, rows: Sequence[Request]) -> Names:
    names = Names()
    people = _ids(id_ for row in rows for id_ in (
        row.member_id, row.requested_by_id, row.requested_for_id, row.created_by_id))
    wanted: list[tuple[dict[int, str], Any, set[int]]] = [
        (names.people, Person, people),
        (names.teams, Team, _ids(row.team_id for row in rows)),
        (names.service_instances, ServiceInstance, _ids(row.service_instance_id for row in rows)),
        (names.organizations, Organization, _ids(row.supplier_id for row in rows)),
    ]
    for target, model, ids in wanted:
        if ids:
            target.update(session.execute(
                select(model.id, model.name).where(model.id.in_(ids))).all())
    templates = _ids(row.template_id for row in rows)
    if templates:
        names.templates.update(session.execute(
            select(RequestTemplate.id, RequestTemplate.subject)
            .where(RequestTemplate.id.in_(templates))).all())
    cis = _ids(row.ci_id for row in rows)
    if cis:
        names.cis.update((ci_id, (label, name)) for ci_id, label, name in session.execute(
            select(ConfigurationItem.id, ConfigurationItem.label, ConfigurationItem.name)
            .where(ConfigurationItem.id.in_(cis))))
    return names


@dataclass(frozen=True)
class Page:
    """One page of a list: 1-based ``number``, ``size`` items a page, ``total`` items in all."""

    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return -(-self.total // self.size)


def _page(session: Session, query: Select[Any], number: int, size: int
          ) -> tuple[list[Any], Page]:
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(session.scalars(query.offset((number - 1) * size).limit(size)))
    return rows, Page(number, size, total)


def get_request(session: Session, account_id: str, request_id: int) -> RequestView | None:
    row = session.get(Request, request_id)
    if row is None or row.account_id != account_id:
        return None
    return request_view(row, load_names(session, [row]))


@dataclass(frozen=True)
class RequestFilter:
    source: str | None = None
    source_id: str | None = None
    status: str | None = None
    updated_since: datetime | None = None


def requests_query(account_id: str, where: RequestFilter) -> Select[Request]:
    query = select(Request).where(Request.account_id == account_id)
    if where.source is not None:
        query = query.where(Request.source == where.source)
    if where.source_id is not None:
        query = query.where(Request.source_id == where.source_id)
    if where.status is not None:
        query = query.where(Request.status == where.status)
    if where.updated_since is not None:
        query = query.where(Request.updated_at >= where.updated_since)
    return query.order_by(Request.id)


def list_requests(
    session: Session, account_id: str, where: RequestFilter, number: int, size: int
) -> tuple[list[RequestView], Page]:
    """The account's requests that pass ``where``, oldest first, page ``number``."""
    rows, page = _page(session, requests_query(account_id, where), number, size)
    names = load_names(session, rows)
    return [request_view(row, names) for row in rows], page


def notes_query(request_id: int) -> Select[Note]:
    return select(Note).where(Note.request_id == request_id).order_by(Note.id)


def list_notes(
    session: Session, account_id: str, request_id: int, number: int, size: int
) -> tuple[list[NoteView], Page] | None:
    """The request's notes, oldest first; None when it is not a request of the account."""
    owner = session.scalar(select(Request.account_id).where(Request.id == request_id))
    if owner != account_id:
        return None
    rows, page = _page(session, notes_query(request_id), number, size)
    return [note_view(row) for row in rows], page
