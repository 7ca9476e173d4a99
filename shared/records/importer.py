"""Reference records files: idempotent import (upsert) and export.

A records file is a mapping of kinds (the keys of :data:`KINDS`, imported in that order) to lists
of items; an item is a mapping of its model's column names (``account`` may stand for
``account_id``, ``sourceID`` for ``source_id``). An item is matched to an existing record by
``id``; without an id, by the kind's natural key (teams: account and name; configuration items:
account, source and source_id; event definitions: account and evtid; API keys: the hash of the
plaintext ``key``). Matched records are updated with the fields the item gives; others are
created. So a file can be applied any number of times.

The whole file is checked (fields, types, lengths, references) before anything is written; a
fault raises :class:`RecordsError` naming the kind, the item's index and the field. Nothing is
committed here: the caller commits, or rolls back on the error.
"""

from __future__ import annotations

import copy
import json
import logging
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.db.models import (
    Account,
    ApiKey,
    Base,
    ConfigurationItem,
    EventDefinition,
    Organization,
    Person,
    Problem,
    RequestTemplate,
    ServiceInstance,
    SupportAgreement,
    Team,
    Workflow,
)
from shared.notify.urls import check_syntax
from shared.records.keys import hash_key
from shared.requests.fields import check_text
from shared.requests.shaping import Template, check_definition

log = logging.getLogger(__name__)


class RecordsError(Exception):
    """A records file that cannot be imported; the message names the kind, item and field."""

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        index: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.index = index
        self.field = field


@dataclass(frozen=True)
class Kind:
    """How one top-level key of a records file maps onto a model."""

    model: type[Base]
    # Columns that identify an item given without an id (all of them must be non-null).
    natural_key: tuple[str, ...] = ()
    # Fields holding the id (or a list of ids) of a record of another kind.
    refs: Mapping[str, str] = field(default_factory=dict)
    # Whether items carry their id (False: the database assigns it; the natural key identifies).
    has_id: bool = True
    # Columns that are not part of the file format.
    hidden: frozenset[str] = frozenset()
    # JSON list fields whose elements must be strings.
    str_lists: tuple[str, ...] = ()


_ACCOUNT = {"account_id": "accounts"}

KINDS: dict[str, Kind] = {
    "accounts": Kind(
        Account, refs={"directory_account_id": "accounts"}, str_lists=("signing_secrets",)
    ),
    "teams": Kind(Team, ("account_id", "name"), _ACCOUNT),
    "organizations": Kind(Organization, refs=_ACCOUNT),
    "people": Kind(
        Person,
        refs={**_ACCOUNT, "organization_id": "organizations", "team_ids": "teams"},
        str_lists=("other_emails",),
    ),
    "service_instances": Kind(
        ServiceInstance,
        refs={**_ACCOUNT, "first_line_team_id": "teams", "support_team_id": "teams"},
    ),
    "configuration_items": Kind(
        ConfigurationItem,
        ("account_id", "source", "source_id"),
        {**_ACCOUNT, "service_instance_ids": "service_instances"},
    ),
    "request_templates": Kind(RequestTemplate, refs={**_ACCOUNT, "workflow_manager_id": "people"}),
    "support_agreements": Kind(
        SupportAgreement,
        refs={
            **_ACCOUNT,
            "customer_account_id": "accounts",
            "customer_organization_id": "organizations",
            "service_desk_team_id": "teams",
        },
    ),
    "problems": Kind(Problem, refs=_ACCOUNT),
    "workflows": Kind(Workflow, refs=_ACCOUNT),
    "event_definitions": Kind(
        EventDefinition, ("account_id", "evtid"), _ACCOUNT, has_id=False, str_lists=("mandatory",)
    ),
    # The file gives the plaintext ``key``; only its hash is stored, and export never writes it.
    "api_keys": Kind(
        ApiKey,
        ("key_hash",),
        {**_ACCOUNT, "person_id": "people"},
        has_id=False,
        hidden=frozenset({"key_hash", "created_at", "revoked_at"}),
    ),
}

ALIASES = {"account": "account_id", "sourceID": "source_id"}


def _notify_url(value: str) -> str:
    return check_syntax(check_text(value))


# Text fields that must also pass the rule the api or the worker applies to them (it raises
# ValueError), so that a record that could never work is refused here, not at every event.
_RULES: dict[tuple[str, str], Callable[[str], object]] = {
    ("event_definitions", "subject_template"): Template.parse,
    ("event_definitions", "note_template"): Template.parse,
    ("event_definitions", "notifyurl"): _notify_url,
    ("api_keys", "notifyurl"): _notify_url,
}


@dataclass(frozen=True)
class _Field:
    name: str
    type: type  # str, int, bool, list or dict
    nullable: bool
    required: bool
    max_length: int | None


@cache
def _fields(kind_name: str) -> dict[str, _Field]:
    """The file fields of a kind, derived from its model's columns and annotations."""
    kind = KINDS[kind_name]
    hints = typing.get_type_hints(kind.model)
    fields: dict[str, _Field] = {}
    for column in kind.model.__table__.columns:
        if column.name in kind.hidden or (column.primary_key and not kind.has_id):
            continue
        # Mapped[X], Mapped[X | None], Mapped[list[Any]] ...
        (annotation,) = typing.get_args(hints[column.name])
        choices = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
        (base,) = [choice for choice in choices if choice is not types.NoneType]
        fields[column.name] = _Field(
            name=column.name,
            type=typing.get_origin(base) or base,
            nullable=types.NoneType in choices,
            required=not column.nullable and column.default is None and not column.primary_key,
            max_length=getattr(column.type, "length", None),
        )
    if kind_name == "api_keys":
        fields["key"] = _Field("key", str, nullable=False, required=False, max_length=None)
    return fields


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _error(kind: str, index: int, field: str | None, problem: str) -> RecordsError:
    where = f"{kind}[{index}]" + (f".{field}" if field else "")
    return RecordsError(f"{where}: {problem}", kind=kind, index=index, field=field)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list):
        return all(_is_json(element) for element in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _fits_bigint(value: int) -> bool:
    return -(2**63) <= value < 2**63


def _check_value(spec: _Field, value: Any) -> str | None:
    """What is wrong with ``value`` for ``spec``, or None."""
    if value is None:
        return None if spec.nullable else "must not be null"
    # bool is an int subclass: keep true/false out of id fields and numbers out of flags.
    if not isinstance(value, spec.type) or (isinstance(value, bool) and spec.type is not bool):
        return f"expected {spec.type.__name__}, got {_type_name(value)}"
    if isinstance(value, int) and not _fits_bigint(value):
        return "out of range for a 64-bit integer"
    if spec.max_length is not None and isinstance(value, str) and len(value) > spec.max_length:
        return f"longer than {spec.max_length} characters"
    if spec.type in (list, dict) and not _is_json(value):
        return "must hold only JSON values (strings, numbers, booleans, null, lists, mappings)"
    return None


def _normalize(kind_name: str, index: int, raw: Any) -> dict[str, Any]:
    """Check one item's fields and types; return it with canonical field names."""
    kind = KINDS[kind_name]
    if not isinstance(raw, dict):
        raise _error(kind_name, index, None, f"expected a mapping, got {_type_name(raw)}")
    specs = _fields(kind_name)
    item: dict[str, Any] = {}
    for given, value in raw.items():
        name = ALIASES.get(given, given) if isinstance(given, str) else given
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            raise _error(kind_name, index, str(given), "unknown field")
        if name in item:
            raise _error(kind_name, index, str(given), f"given twice (also as {name})")
        problem = _check_value(spec, value)
        if (
            problem is None
            and name in kind.str_lists
            and not all(isinstance(element, str) for element in value)
        ):
            problem = "expected a list of strings"
        rule = _RULES.get((kind_name, name))
        if problem is None and rule is not None and isinstance(value, str):
            try:
                rule(value)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            raise _error(kind_name, index, str(given), problem)
        item[name] = value
    for spec in specs.values():
        if spec.required and spec.name not in item:
            raise _error(kind_name, index, spec.name, "required")
    if kind.has_id and "id" not in item and not _has_natural_key(kind, item):
        keys = ", ".join(kind.natural_key)
        problem = f"required (unless {keys} are given)" if kind.natural_key else "required"
        raise _error(kind_name, index, "id", problem)
    if "key" in item:
        item["key_hash"] = hash_key(item.pop("key"))
    return item


def _has_natural_key(kind: Kind, item: Mapping[str, Any]) -> bool:
    return bool(kind.natural_key) and all(item.get(name) is not None for name in kind.natural_key)


def _identity(kind: Kind, item: Mapping[str, Any]) -> tuple[Any, ...] | None:
    if "id" in item:
        return ("id", item["id"])
    if _has_natural_key(kind, item):
        return tuple(item[name] for name in kind.natural_key)
    return None


class _References:
    """Which ids exist: in the database, or earlier in the file."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.in_file: dict[str, set[Any]] = {name: set() for name in KINDS}
        self._in_db: dict[tuple[str, Any], bool] = {}

    def exists(self, kind_name: str, record_id: Any) -> bool:
        if record_id in self.in_file[kind_name]:
            return True
        known = self._in_db.get((kind_name, record_id))
        if known is None:
            model = KINDS[kind_name].model
            known = self._in_db[(kind_name, record_id)] = (
                self.session.get(model, record_id) is not None
            )
        return known

    def check(self, kind_name: str, index: int, item: Mapping[str, Any]) -> None:
        for name, target in KINDS[kind_name].refs.items():
            value = item.get(name)
            values: Iterable[Any] = value if isinstance(value, list) else [value]
            id_type = _fields(target)["id"].type
            for record_id in values:
                if record_id is None:
                    continue
                if (
                    not isinstance(record_id, id_type)
                    or isinstance(record_id, bool)
                    or (isinstance(record_id, int) and not _fits_bigint(record_id))
                ):
                    raise _error(
                        kind_name, index, name, f"expected {target} ids, got {record_id!r}"
                    )
                if not self.exists(target, record_id):
                    raise _error(
                        kind_name, index, name, f"no {target} record with id {record_id!r}"
                    )


def _definition_faults(item: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An event definition's defaults and mapping, by the worker's rules (shared/requests)."""
    return check_definition(item.get("defaults") or {}, item.get("mapping") or {})


class _PrimaryEmails:
    """People are found by primary email, case-insensitively (shared/records/directory.py), so a
    second person of an account with the same one could never be found: refused."""

    def __init__(self, session: Session, ids_in_file: set[Any]) -> None:
        self.session = session
        # A person in the database that the file also gives is judged by its item in the file.
        self.ids_in_file = ids_in_file
        self.in_file: dict[tuple[str, str], Any] = {}

    def check(self, index: int, item: Mapping[str, Any]) -> None:
        account, email, person = item.get("account_id"), item.get("primary_email"), item.get("id")
        if account is None or email is None:
            return  # an update by id that does not change them
        folded = email.strip().casefold()
        other = self.in_file.setdefault((account, folded), person)
        if other == person:
            other = next((found for found in self.session.scalars(select(Person.id).where(
                Person.account_id == account,
                func.lower(func.trim(Person.primary_email)) == folded,
            )) if found != person and found not in self.ids_in_file), None)
        if other is not None:
            raise _error("people", index, "primary_email",
                         f"person {other} of account {account!r} has this primary email")


def _validate(session: Session, data: Any) -> list[tuple[str, list[dict[str, Any]]]]:
    """Check a whole records file; return its items per kind, in import order."""
    if not isinstance(data, dict):
        raise RecordsError(f"a records file is a mapping of kinds, got {_type_name(data)}")
    unknown = [str(name) for name in data if name not in KINDS]
    if unknown:
        raise RecordsError(
            f"unknown kind {unknown[0]!r} (known kinds: {', '.join(KINDS)})", kind=unknown[0]
        )
    references = _References(session)
    people = data.get("people")
    emails = _PrimaryEmails(session, {
        raw.get("id") for raw in people if isinstance(raw, dict)
    } if isinstance(people, list) else set())
    plan: list[tuple[str, list[dict[str, Any]]]] = []
    for kind_name, kind in KINDS.items():
        raw_items = data.get(kind_name)
        if raw_items is None:
            continue
        if not isinstance(raw_items, list):
            raise RecordsError(
                f"{kind_name}: expected a list of items, got {_type_name(raw_items)}",
                kind=kind_name,
            )
        seen: set[tuple[Any, ...]] = set()
        items: list[dict[str, Any]] = []
        for index, raw in enumerate(raw_items):
            item = _normalize(kind_name, index, raw)
            identity = _identity(kind, item)
            if identity is not None:
                if identity in seen:
                    raise _error(kind_name, index, None, "the same record is given twice")
                seen.add(identity)
            # Same-kind references (an account's directory account) must point to earlier items.
            references.check(kind_name, index, item)
            faults = _definition_faults(item) if kind.model is EventDefinition else []
            if faults:
                raise _error(kind_name, index, *faults[0])
            if kind.model is Person:
                emails.check(index, item)
            if "id" in item:
                references.in_file[kind_name].add(item["id"])
            items.append(item)
        plan.append((kind_name, items))
    return plan


class _Writer:
    def __init__(self, session: Session, in_file: Mapping[str, set[Any]]) -> None:
        self.session = session
        self.in_file = in_file
        self._next_ids: dict[str, int] = {}

    def next_id(self, kind_name: str) -> int:
        """A free id for a record given by its natural key only (teams, configuration items)."""
        if kind_name not in self._next_ids:
            model: Any = KINDS[kind_name].model
            in_db = self.session.scalar(select(func.max(model.id))) or 0
            self._next_ids[kind_name] = max([in_db, *self.in_file[kind_name]]) + 1
        next_id = self._next_ids[kind_name]
        self._next_ids[kind_name] += 1
        return next_id

    def find(self, kind: Kind, item: Mapping[str, Any]) -> Base | None:
        model: Any = kind.model
        if "id" in item:
            return self.session.get(model, item["id"])
        if _has_natural_key(kind, item):
            criteria = {name: item[name] for name in kind.natural_key}
        elif kind.model is ApiKey:
            # An exported key (no plaintext): it can update a key of that name, never create one.
            criteria = {"account_id": item["account_id"], "name": item["name"]}
        else:
            return None
        # Natural keys of CIs are not unique in the schema: take the oldest record.
        query = select(model).filter_by(**criteria).order_by(model.id)
        return self.session.scalars(query).first()

    def upsert(self, kind_name: str, index: int, item: dict[str, Any]) -> bool:
        kind = KINDS[kind_name]
        record = self.find(kind, item)
        if record is None:
            if kind.model is ApiKey and "key_hash" not in item:
                log.warning(
                    "%s[%d]: no key %r in account %r and no plaintext key to create it; skipped",
                    kind_name,
                    index,
                    item["name"],
                    item["account_id"],
                )
                return False
            if kind.has_id and "id" not in item:
                item["id"] = self.next_id(kind_name)
            record = kind.model()
            self.session.add(record)
        for name, value in item.items():
            if getattr(record, name, None) != value:
                setattr(record, name, copy.deepcopy(value))
        try:
            self.session.flush()
        except DBAPIError as exc:  # a unique key, a value the database refuses
            raise _error(kind_name, index, None, f"rejected by the database: {exc.orig}") from exc
        return True


def import_records(session: Session, data: dict[str, Any]) -> dict[str, int]:
    """Upsert the records of a records file; return how many items of each kind were applied.

    Raises :class:`RecordsError` on any fault; the whole file is checked before anything is
    written, and nothing is committed (the caller commits, or rolls back on the error).
    """
    plan = _validate(session, data)
    writer = _Writer(session, _ids_in_file(plan))
    counts: dict[str, int] = {}
    for kind_name, items in plan:
        counts[kind_name] = sum(
            writer.upsert(kind_name, index, item) for index, item in enumerate(items)
        )
    return counts


def _ids_in_file(plan: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, set[Any]]:
    return {kind_name: {item["id"] for item in items if "id" in item} for kind_name, items in plan}


def export_records(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Every reference record, in the records file format (API keys without key material)."""
    exported: dict[str, list[dict[str, Any]]] = {}
    for kind_name, kind in KINDS.items():
        model: Any = kind.model
        query = select(model)
        if kind.has_id:
            query = query.order_by(model.id)
        else:
            query = query.order_by(*(getattr(model, name) for name in ("account_id", "id")))
        if model is ApiKey:
            query = query.where(ApiKey.revoked_at.is_(None))
        names = [name for name in _fields(kind_name) if name != "key"]
        items = []
        for record in session.scalars(query):
            item = {name: copy.deepcopy(getattr(record, name)) for name in names}
            if "account_id" in item:
                item = {("account" if k == "account_id" else k): v for k, v in item.items()}
            items.append(item)
        exported[kind_name] = items
    exported["accounts"] = _directories_first(exported["accounts"])
    return exported


def _directories_first(accounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accounts ordered so that each comes after its directory account (as import requires)."""
    ordered: list[dict[str, Any]] = []
    placed: set[Any] = set()
    pending = list(accounts)
    while pending:
        ready = [
            account
            for account in pending
            if account["directory_account_id"] in placed or account["directory_account_id"] is None
        ] or pending  # a cycle cannot be ordered: keep the rest as it is
        ordered.extend(ready)
        placed.update(account["id"] for account in ready)
        pending = [account for account in pending if account not in ready]
    return ordered


def import_file(session: Session, path: str | Path) -> dict[str, int]:
    """:func:`import_records` of a file; a fault in an item also names the item's line."""
    text = _read(Path(path))
    try:
        return import_records(session, _parse(Path(path), text))
    except RecordsError as exc:
        line = _item_lines(text).get((exc.kind, exc.index))
        if line is None:
            raise
        raise RecordsError(f"{path}, line {line}: {exc}", kind=exc.kind, index=exc.index,
                           field=exc.field) from exc


def _item_lines(text: str) -> dict[tuple[str | None, int | None], int]:
    """The line (from 1) where each item of each kind starts; JSON is YAML enough for this."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[str | None, int | None], int] = {}
    if isinstance(root, yaml.MappingNode):
        for key, items in root.value:
            if isinstance(items, yaml.SequenceNode):
                for index, item in enumerate(items.value):
                    lines[(key.value, index)] = item.start_mark.line + 1
    return lines


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a records file: YAML (``.yaml``, ``.yml``) or JSON (``.json``)."""
    path = Path(path)
    return _parse(path, _read(path))


def _read(path: Path) -> str:
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise RecordsError(f"{path}: expected a .yaml, .yml or .json file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordsError(f"{path}: cannot read: {exc}") from exc


def _parse(path: Path, text: str) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RecordsError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecordsError(f"{path}: a records file is a mapping of kinds")
    return data
