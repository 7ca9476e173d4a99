"""Name resolution: the way a monitoring tool names a record, to the record (DESIGN 4.2).

A worker resolves thousands of references a second, so it does not query per reference: it
loads an account's reference records once into an :class:`AccountRecords` snapshot (a few
queries) and keeps it for ``EVENTDESK_CACHE_TTL_SECONDS``. Lookups are then dictionary reads.

Lookups, in the account and then in its directory account:
- people by primary email, then by other emails (case-insensitive);
- teams, service instances, organizations (suppliers) by name (case-insensitive);
- configuration items by label, or for a software CI by name; by ``ci_source`` + ``ci_sourceID``
  (``ci_sourceID`` alone when no source is given);
- every ``*_id`` field by id, which must belong to the account (or its directory account).

A reference may name another account with an ``@account`` suffix (``ABC1234@wdc``); the suffix
counts only when it is an account's id (so ``howard.tanner@widget.com`` stays an address).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import (
    Account,
    ApiKey,
    ConfigurationItem,
    Organization,
    Person,
    Problem,
    RequestTemplate,
    ServiceInstance,
    SupportAgreement,
    Team,
    Workflow,
)


@dataclass(frozen=True)
class PersonRef:
    id: int
    account_id: str
    name: str
    primary_email: str
    organization_id: int | None
    team_ids: tuple[int, ...]
    roles: dict[str, Any]


@dataclass(frozen=True)
class NamedRef:
    id: int
    account_id: str
    name: str


@dataclass(frozen=True)
class ServiceInstanceRef(NamedRef):
    first_line_team_id: int | None
    support_team_id: int | None


@dataclass(frozen=True)
class CIRef(NamedRef):
    label: str | None
    software: bool
    source: str | None
    source_id: str | None
    service_instance_ids: tuple[int, ...]


@dataclass(frozen=True)
class TemplateRef:
    id: int
    account_id: str
    subject: str
    fields: dict[str, Any]
    workflow_template: bool
    workflow_manager_id: int | None


@dataclass(frozen=True)
class AgreementRef:
    id: int
    customer_account_id: str | None
    customer_organization_id: int | None
    service_desk_team_id: int | None


def _fold(text: str) -> str:
    return text.strip().casefold()


@dataclass
class AccountRecords:
    """One account's reference records, indexed for the lookups above."""

    account_id: str
    directory_account_id: str | None
    people_by_email: dict[str, PersonRef] = field(default_factory=dict)
    people_by_other_email: dict[str, PersonRef] = field(default_factory=dict)
    people: dict[int, PersonRef] = field(default_factory=dict)
    teams_by_name: dict[str, NamedRef] = field(default_factory=dict)
    teams: dict[int, NamedRef] = field(default_factory=dict)
    organizations_by_name: dict[str, NamedRef] = field(default_factory=dict)
    organizations: dict[int, NamedRef] = field(default_factory=dict)
    service_instances_by_name: dict[str, ServiceInstanceRef] = field(default_factory=dict)
    service_instances: dict[int, ServiceInstanceRef] = field(default_factory=dict)
    cis_by_label: dict[str, CIRef] = field(default_factory=dict)
    cis_by_source: dict[tuple[str, str], CIRef] = field(default_factory=dict)
    cis_by_source_id: dict[str, CIRef] = field(default_factory=dict)
    cis: dict[int, CIRef] = field(default_factory=dict)
    templates: dict[int, TemplateRef] = field(default_factory=dict)
    agreements: list[AgreementRef] = field(default_factory=list)
    problems: set[int] = field(default_factory=set)
    workflows: set[int] = field(default_factory=set)
    # API key id -> the person it acts as.
    key_people: dict[int, int | None] = field(default_factory=dict)


def load_account(session: Session, account_id: str) -> AccountRecords | None:
    account = session.get(Account, account_id)
    if account is None:
        return None
    records = AccountRecords(account_id, account.directory_account_id)
    for person in session.scalars(select(Person).where(Person.account_id == account_id)):
        ref = PersonRef(person.id, person.account_id, person.name, person.primary_email,
                        person.organization_id, tuple(person.team_ids), dict(person.roles))
        records.people[ref.id] = ref
        records.people_by_email[_fold(person.primary_email)] = ref
        for other in person.other_emails:
            records.people_by_other_email.setdefault(_fold(str(other)), ref)
    for team in session.scalars(select(Team).where(Team.account_id == account_id)):
        named = NamedRef(team.id, team.account_id, team.name)
        records.teams[team.id] = named
        records.teams_by_name[_fold(team.name)] = named
    for org in session.scalars(select(Organization).where(Organization.account_id == account_id)):
        named = NamedRef(org.id, org.account_id, org.name)
        records.organizations[org.id] = named
        records.organizations_by_name.setdefault(_fold(org.name), named)
    for si in session.scalars(
        select(ServiceInstance).where(ServiceInstance.account_id == account_id)
    ):
        si_ref = ServiceInstanceRef(si.id, si.account_id, si.name, si.first_line_team_id,
                                    si.support_team_id)
        records.service_instances[si.id] = si_ref
        records.service_instances_by_name.setdefault(_fold(si.name), si_ref)
    for ci in session.scalars(
        select(ConfigurationItem).where(ConfigurationItem.account_id == account_id)
        .order_by(ConfigurationItem.id)
    ):
        ci_ref = CIRef(ci.id, ci.account_id, ci.name, ci.label, ci.software, ci.source,
                       ci.source_id, tuple(ci.service_instance_ids))
        records.cis[ci.id] = ci_ref
        # A software CI is known by its name; any other CI by its label.
        handle = ci.name if ci.software else ci.label
        if handle:
            records.cis_by_label.setdefault(_fold(handle), ci_ref)
        if ci.source_id:
            records.cis_by_source_id.setdefault(ci.source_id, ci_ref)
            if ci.source:
                records.cis_by_source.setdefault((ci.source, ci.source_id), ci_ref)
    for template in session.scalars(
        select(RequestTemplate).where(RequestTemplate.account_id == account_id)
    ):
        records.templates[template.id] = TemplateRef(
            template.id, template.account_id, template.subject, dict(template.fields),
            template.workflow_template, template.workflow_manager_id,
        )
    records.agreements = [
        AgreementRef(a.id, a.customer_account_id, a.customer_organization_id,
                     a.service_desk_team_id)
        for a in session.scalars(
            select(SupportAgreement).where(SupportAgreement.account_id == account_id)
            .order_by(SupportAgreement.id)
        )
    ]
    records.problems = set(session.scalars(
        select(Problem.id).where(Problem.account_id == account_id)))
    records.workflows = set(session.scalars(
        select(Workflow.id).where(Workflow.account_id == account_id)))
    keys = session.execute(select(ApiKey.id, ApiKey.person_id).where(
        ApiKey.account_id == account_id))
    records.key_people = {row.id: row.person_id for row in keys}
    return records


class Directory:
    """Per-process cache of :class:`AccountRecords`, refreshed after ``ttl`` seconds.

    Accounts that do not exist are remembered too (an ``@suffix`` of a reference name asks for
    one, and a monitoring tool's names such as ``HTTP@web-17`` ask for many), but at most
    MAX_MISSES of them: a process that lives for months would otherwise keep every suffix it
    ever saw."""

    MAX_MISSES = 4096

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._accounts: dict[str, tuple[float, AccountRecords | None]] = {}
        self._misses = 0  # misses remembered since the last pruning: at least those held
        self._lock = threading.Lock()

    def account(self, session: Session, account_id: str) -> AccountRecords | None:
        now = self._clock()
        hit = self._accounts.get(account_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        records = load_account(session, account_id)
        with self._lock:
            held = self._accounts.get(account_id)
            if records is None and (held is None or held[1] is not None):
                self._misses += 1
                if self._misses > self.MAX_MISSES:
                    self._accounts = {known: entry for known, entry in self._accounts.items()
                                      if entry[1] is not None}
                    self._misses = 1
            self._accounts[account_id] = (now + self._ttl, records)
        return records

    def remembered(self) -> int:
        """How many accounts are remembered, those that do not exist included."""
        return len(self._accounts)

    def forget(self, account_id: str) -> None:
        """Load the account again on its next use (a record of it was just written)."""
        with self._lock:
            self._accounts.pop(account_id, None)


class Scope:
    """The accounts a reference may be resolved in: the request's account, then its directory."""

    def __init__(self, session: Session, directory: Directory, account_id: str) -> None:
        self._session = session
        self._directory = directory
        home = directory.account(session, account_id)
        if home is None:
            raise LookupError(f"account {account_id!r} does not exist")
        self.home = home
        chain = [home]
        if home.directory_account_id:
            parent = directory.account(session, home.directory_account_id)
            if parent is not None:
                chain.append(parent)
        self.chain = chain

    def _accounts_for(self, value: str, *, email: bool) -> tuple[str, list[AccountRecords]]:
        """Split an ``@account`` suffix off ``value``; the accounts to search, in order."""
        name, at, suffix = value.rpartition("@")
        if at and (not email or "@" in name):
            other = self._directory.account(self._session, suffix)
            if other is not None:
                return name, [other]
        return value, self.chain

    def _find(self, value: str, lookup: Callable[[AccountRecords, str], Any], *,
              email: bool = False) -> Any:
        name, accounts = self._accounts_for(value, email=email)
        for records in accounts:
            found = lookup(records, name)
            if found is not None:
                return found
        return None

    def person(self, value: str) -> PersonRef | None:
        def lookup(records: AccountRecords, name: str) -> PersonRef | None:
            key = _fold(name)
            return records.people_by_email.get(key)

        def other(records: AccountRecords, name: str) -> PersonRef | None:
            return records.people_by_other_email.get(_fold(name))

        # Primary addresses of every account in scope come before any other address.
        found: PersonRef | None = self._find(value, lookup, email=True)
        return found or self._find(value, other, email=True)

    def team(self, value: str) -> NamedRef | None:
        return self._find(value, lambda r, n: r.teams_by_name.get(_fold(n)))  # type: ignore[no-any-return]

    def service_instance(self, value: str) -> ServiceInstanceRef | None:
        return self._find(  # type: ignore[no-any-return]
            value, lambda r, n: r.service_instances_by_name.get(_fold(n)))

    def organization(self, value: str) -> NamedRef | None:
        return self._find(  # type: ignore[no-any-return]
            value, lambda r, n: r.organizations_by_name.get(_fold(n)))

    def ci(self, value: str) -> CIRef | None:
        return self._find(value, lambda r, n: r.cis_by_label.get(_fold(n)))  # type: ignore[no-any-return]

    def ci_by_source(self, source: str | None, source_id: str) -> CIRef | None:
        for records in self.chain:
            found = (records.cis_by_source.get((source, source_id)) if source
                     else records.cis_by_source_id.get(source_id))
            if found is not None:
                return found
        return None

    def by_id(self, kind: str, value: int) -> Any:
        for records in self.chain:
            if kind in ("problems", "workflows"):
                if value in getattr(records, kind):
                    return value
                continue
            found = getattr(records, kind).get(value)
            if found is not None:
                return found
        return None

    def first(self, items: Iterable[int], kind: str) -> Any:
        for item in items:
            found = self.by_id(kind, item)
            if found is not None:
                return found
        return None
