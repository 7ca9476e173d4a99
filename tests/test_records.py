"""Reference records: import, export and API keys, on SQLite and on PostgreSQL."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import event, func, select, text

from shared.db.engine import get_engine, session_scope
from shared.db.migrate import upgrade
from shared.db.models import (
    Account,
    ApiKey,
    Base,
    ConfigurationItem,
    EventDefinition,
    Person,
    RequestTemplate,
    ServiceInstance,
    SupportAgreement,
    Team,
)
from shared.records.directory import Directory
from shared.records.importer import (
    KINDS,
    RecordsError,
    export_records,
    import_records,
    load_file,
)
from shared.records.keys import Revoked, create_key, find_key, hash_key, revoke_key
from tests.conftest import throwaway_database

DEMO = Path(__file__).resolve().parents[1] / "shared" / "records" / "demo.yaml"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEMO_COUNTS = {
    "accounts": 2,
    "teams": 4,
    "organizations": 1,
    "people": 4,
    "service_instances": 3,
    "configuration_items": 3,
    "request_templates": 2,
    "support_agreements": 1,
    "problems": 1,
    "workflows": 1,
    "event_definitions": 1,
    "api_keys": 1,
}
REFERENCE_TABLES = [kind.model.__tablename__ for kind in KINDS.values()]


# --- databases -------------------------------------------------------------------------------


def fresh_sqlite(directory: Path, name: str = "records.sqlite") -> str:
    url = f"sqlite:///{directory / name}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def records_pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session, migrated, dropped at the end."""
    with throwaway_database("eventdesk_test_records") as url:
        yield url


@pytest.fixture
def records_pg_url(records_pg_database: str) -> str:
    """The session's PostgreSQL database, emptied of reference records for this test."""
    with session_scope(records_pg_database) as session:
        tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
        session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return records_pg_database


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty, migrated database: SQLite in tmp_path, or the session's PostgreSQL database."""
    if request.param == "postgres":
        yield request.getfixturevalue("records_pg_url")
        return
    url = fresh_sqlite(tmp_path)
    yield url
    get_engine(url).dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[str]:
    url = fresh_sqlite(tmp_path)
    yield url
    get_engine(url).dispose()


def demo() -> dict[str, Any]:
    return load_file(DEMO)


def load(url: str, data: dict[str, Any]) -> dict[str, int]:
    with session_scope(url) as session:
        return import_records(session, data)


def export(url: str) -> dict[str, list[dict[str, Any]]]:
    with session_scope(url) as session:
        return export_records(session)


def row_counts(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
            if table.name in REFERENCE_TABLES
        }


class Writes:
    """Records the INSERT, UPDATE and DELETE statements an engine runs."""

    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)
        self.statements: list[str] = []

    def _record(self, *args: Any) -> None:
        statement = str(args[2]).lstrip().split(None, 1)[0].upper()
        if statement in ("INSERT", "UPDATE", "DELETE"):
            self.statements.append(str(args[2]))

    def __enter__(self) -> Writes:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)


# --- import ----------------------------------------------------------------------------------


def test_import_demo(db_url: str) -> None:
    assert load(db_url, demo()) == DEMO_COUNTS
    assert row_counts(db_url) == {
        KINDS[kind].model.__tablename__: count for kind, count in DEMO_COUNTS.items()
    }
    with session_scope(db_url) as session:
        wdc = session.get(Account, "wdc")
        assert wdc is not None
        assert wdc.name == "Widget Data Center"
        assert wdc.mail_domain == "mail.eventdesk.local"
        assert wdc.directory_account_id == "widget"
        assert wdc.signing_secrets == ["whsec_ZGVtby1zaWduaW5nLXNlY3JldC0wMTIzNDU2Nzg5YWI="]

        howard = session.scalars(
            select(Person).where(Person.primary_email == "howard.tanner@widget.com")
        ).one()
        assert howard.name == "Howard Tanner"
        assert howard.roles == {"wdc": ["specialist", "service_desk_analyst"]}
        service_desk = session.get(Team, howard.team_ids[0])
        assert service_desk is not None
        assert service_desk.name == "Service Desk"

        houston = session.scalars(
            select(ServiceInstance).where(ServiceInstance.name == "Houston Office Network")
        ).one()
        first_line = session.get(Team, houston.first_line_team_id)
        assert first_line is not None
        assert first_line.name == "Network Operations"

        database = session.scalars(
            select(ConfigurationItem).where(ConfigurationItem.label == "ABC1234")
        ).one()
        assert database.name == "Expense Reporting Production Database"
        assert (database.source, database.source_id) == ("CMDB", "db-expense-prod-01")
        software = session.scalars(
            select(ConfigurationItem).where(ConfigurationItem.software.is_(True))
        ).one()
        assert software.label is None

        template = session.get(RequestTemplate, 1234)
        assert template is not None
        assert template.subject == "Move Widget Data Center desktop PC"
        assert not template.workflow_template
        end_user_support = session.get(Team, template.fields["team_id"])
        assert end_user_support is not None
        assert end_user_support.name == "End-User Support"
        assert {"category": "rfc", "impact": "low"}.items() <= template.fields.items()

        agreement = session.scalars(select(SupportAgreement)).one()
        assert agreement.customer_account_id == "wdc"
        assert agreement.service_desk_team_id == service_desk.id

        definition = session.scalars(select(EventDefinition)).one()
        assert (definition.account_id, definition.evtid) == ("wdc", "server-down")
        assert definition.mandatory == ["host"]
        assert definition.defaults == {"category": "incident", "impact": "high"}
        assert definition.mapping == {}

        key = session.scalars(select(ApiKey)).one()
        assert key.key_hash == hash_key("demo-key")
        assert (key.account_id, key.name, key.person_id) == ("wdc", "demo", howard.id)


def test_import_twice_changes_nothing(db_url: str) -> None:
    load(db_url, demo())
    before = export(db_url)
    counts = row_counts(db_url)
    with Writes(db_url) as writes:
        assert load(db_url, demo()) == DEMO_COUNTS
    assert writes.statements == []
    assert row_counts(db_url) == counts
    assert export(db_url) == before


def test_export_reimports_to_the_same_export(db_url: str, tmp_path: Path) -> None:
    load(db_url, demo())
    exported = export(db_url)
    text = json.dumps(exported)
    assert "demo-key" not in text
    assert hash_key("demo-key") not in text
    assert exported["api_keys"] == [
        {"account": "wdc", "name": "demo", "person_id": 301, "notifyurl": None}]

    # Through a file of each format, into a second, empty database.
    for suffix, dump in ((".yaml", yaml.safe_dump), (".json", json.dumps)):
        path = tmp_path / f"export{suffix}"
        path.write_text(dump(exported))
        second = fresh_sqlite(tmp_path, f"second{suffix}.sqlite")
        counts = load(second, load_file(path))
        # An export holds no key material, so its keys cannot be created anew (they are skipped);
        # everything else comes back as it was.
        assert counts == {**DEMO_COUNTS, "api_keys": 0}
        assert export(second) == {**exported, "api_keys": []}
        # With the keys given again, the second database exports exactly as the first.
        load(second, {"api_keys": demo()["api_keys"]})
        assert export(second) == exported
        # And the export applies to its own database as a no-op.
        with Writes(second) as writes:
            load(second, load_file(path))
        assert writes.statements == []
        get_engine(second).dispose()


def test_records_without_ids_are_matched_by_natural_key(db_url: str) -> None:
    load(db_url, demo())
    data = {
        "teams": [{"account": "wdc", "name": "Change Advisory Board"}],
        "configuration_items": [
            {
                "account": "wdc",
                "name": "Expense Reporting Production DB (renamed)",
                "label": "ABC1234",
                "source": "CMDB",
                "sourceID": "db-expense-prod-01",
            },
            {"account": "wdc", "name": "Router HOU-1", "source": "CMDB", "sourceID": "rtr-hou-1"},
        ],
        "event_definitions": [
            {"account": "wdc", "evtid": "server-down", "mandatory": ["host", "severity"]}
        ],
    }
    for _ in range(2):
        assert load(db_url, data) == {
            "teams": 1,
            "configuration_items": 2,
            "event_definitions": 1,
        }
    with session_scope(db_url) as session:
        board = session.scalars(select(Team).where(Team.name == "Change Advisory Board")).one()
        assert board.id == 105  # the next free id
        database = session.get(ConfigurationItem, 502)
        assert database is not None
        assert database.name == "Expense Reporting Production DB (renamed)"
        router = session.scalars(
            select(ConfigurationItem).where(ConfigurationItem.source_id == "rtr-hou-1")
        ).one()
        assert router.id == 504
        definition = session.scalars(select(EventDefinition)).one()
        assert definition.mandatory == ["host", "severity"]
        # Fields an item leaves out keep their values.
        assert definition.defaults == {"category": "incident", "impact": "high"}
    assert row_counts(db_url)["teams"] == 5
    assert row_counts(db_url)["configuration_items"] == 4


# --- bad input -------------------------------------------------------------------------------


def mutate(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(demo())
    change(data)
    return data


BAD_FILES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "unknown kind": (lambda d: d.update(widgets=[]), "unknown kind 'widgets'"),
    "kind not a list": (lambda d: d.update(teams={"id": 1}), "teams: expected a list"),
    "item not a mapping": (lambda d: d["people"].append("Ellen"), "people[4]: expected a mapping"),
    "unknown field": (
        lambda d: d["people"][1].update(email="x@widget.com"),
        "people[1].email: unknown field",
    ),
    "hidden column": (
        lambda d: d["api_keys"][0].update(key_hash="0" * 64),
        "api_keys[0].key_hash: unknown field",
    ),
    "field and its alias": (
        lambda d: d["teams"][0].update(account_id="wdc"),
        "teams[0].account_id: given twice",
    ),
    "missing required field": (
        lambda d: d["people"][2].pop("primary_email"),
        "people[2].primary_email: required",
    ),
    "missing id": (lambda d: d["people"][0].pop("id"), "people[0].id: required"),
    "missing id and natural key": (
        lambda d: d["configuration_items"][0].pop("id"),
        "configuration_items[0].id: required (unless account_id, source, source_id are given)",
    ),
    "string for an id": (
        lambda d: d["service_instances"][1].update(first_line_team_id="103"),
        "service_instances[1].first_line_team_id: expected int, got str",
    ),
    "boolean for an id": (
        lambda d: d["teams"][3].update(id=True),
        "teams[3].id: expected int, got bool",
    ),
    "id out of range": (
        lambda d: d["organizations"][0].update(id=2**63),
        "organizations[0].id: out of range",
    ),
    "number for a string": (
        lambda d: d["configuration_items"][0].update(label=23),
        "configuration_items[0].label: expected str, got int",
    ),
    "null for a required field": (
        lambda d: d["accounts"][1].update(name=None),
        "accounts[1].name: must not be null",
    ),
    "too long": (
        lambda d: d["configuration_items"][1].update(source="x" * 31),
        "configuration_items[1].source: longer than 30 characters",
    ),
    "list of non-strings": (
        lambda d: d["event_definitions"][0].update(mandatory=[1]),
        "event_definitions[0].mandatory: expected a list of strings",
    ),
    "non-JSON value": (
        lambda d: d["request_templates"][0]["fields"].update(
            due=__import__("datetime").date.today()
        ),
        "request_templates[0].fields: must hold only JSON values",
    ),
    "missing account": (
        lambda d: d["teams"][2].update(account="nope"),
        "teams[2].account_id: no accounts record with id 'nope'",
    ),
    "missing team in a list": (
        lambda d: d["people"][3].update(team_ids=[103, 999]),
        "people[3].team_ids: no teams record with id 999",
    ),
    "huge id in a list": (
        lambda d: d["configuration_items"][2].update(service_instance_ids=[402, 2**70]),
        "configuration_items[2].service_instance_ids: expected service_instances ids",
    ),
    "missing person": (
        lambda d: d["api_keys"][0].update(person_id=999),
        "api_keys[0].person_id: no people record with id 999",
    ),
    "directory account given later": (
        lambda d: d["accounts"].reverse(),
        "accounts[0].directory_account_id: no accounts record with id 'widget'",
    ),
    "definition default the worker refuses": (
        lambda d: d["event_definitions"][0]["defaults"].update(category="x"),
        "event_definitions[0].defaults.category: must be one of incident",
    ),
    "definition default mapped onto a field that refuses it": (
        lambda d: d["event_definitions"][0].update(defaults={"when": "soon"},
                                                   mapping={"when": "waiting_until"}),
        "event_definitions[0].defaults.when: expected yyyy-mm-ddThh:mm",
    ),
    "definition default with a control character": (
        lambda d: d["event_definitions"][0]["defaults"].update(subject="a\x00b"),
        "event_definitions[0].defaults.subject: must not contain control characters",
    ),
    "definition default that is no text": (
        lambda d: d["event_definitions"][0]["defaults"].update(note=["a"]),
        "event_definitions[0].defaults.note: must be text, a number, a boolean or null",
    ),
    "definition mapping onto no field": (
        lambda d: d["event_definitions"][0].update(mapping={"host": "cii"}),
        "event_definitions[0].mapping.host: 'cii' is not a 4me event field",
    ),
    "second person with the same primary email": (
        lambda d: d["people"][3].update(primary_email=" Howard.TANNER@widget.com"),
        "people[3].primary_email: person 301 of account 'wdc' has this primary email",
    ),
    "same record twice": (
        lambda d: d["teams"].append(dict(d["teams"][0])),
        "teams[4]: the same record is given twice",
    ),
}


@pytest.mark.parametrize("fault", BAD_FILES)
def test_bad_file_raises_and_writes_nothing(db_url: str, fault: str) -> None:
    change, message = BAD_FILES[fault]
    with pytest.raises(RecordsError) as raised, session_scope(db_url) as session:
        import_records(session, mutate(change))
    assert message in str(raised.value)
    assert raised.value.kind is not None
    assert set(row_counts(db_url).values()) == {0}


def test_primary_email_of_a_person_in_the_database_is_refused(db_url: str) -> None:
    load(db_url, demo())
    before = export(db_url)
    newcomer = {"id": 399, "account": "wdc", "name": "Howard T.",
                "primary_email": "HOWARD.tanner@widget.com"}
    with pytest.raises(RecordsError, match=r"people\[0\].primary_email: person 301 of"):
        load(db_url, {"people": [newcomer]})
    assert export(db_url) == before
    # Another account may have its own Howard; and a file that moves 301 to another email
    # frees the old one.
    load(db_url, {"people": [{**newcomer, "account": "widget"}]})
    moved = {"id": 301, "account": "wdc", "name": "Howard Tanner",
             "primary_email": "howard@widget.com"}
    load(db_url, {"people": [newcomer, moved]})


def test_error_names_kind_index_and_field(sqlite_db: str) -> None:
    with session_scope(sqlite_db) as session:
        with pytest.raises(RecordsError) as raised:
            import_records(session, mutate(lambda d: d["people"][2].pop("primary_email")))
        # The whole file is checked before anything is written: the session holds no changes.
        assert not session.new
        assert not session.dirty
    assert (raised.value.kind, raised.value.index, raised.value.field) == (
        "people",
        2,
        "primary_email",
    )


def test_database_conflict_raises_and_writes_nothing(db_url: str) -> None:
    load(db_url, demo())
    before = export(db_url)
    # A new team id with the name of an existing team in the same account.
    data = {
        "organizations": [{"id": 202, "account": "wdc", "name": "Widget Logistics"}],
        "teams": [{"id": 999, "account": "wdc", "name": "Service Desk"}],
    }
    with pytest.raises(RecordsError, match=r"teams\[0\]: rejected by the database"):
        load(db_url, data)
    assert export(db_url) == before
    # A string the database refuses (PostgreSQL text cannot hold NUL; SQLite can).
    if db_url.startswith("postgresql"):
        data = {"teams": [{"id": 105, "account": "wdc", "name": "Null\x00Team"}]}
        with pytest.raises(RecordsError, match=r"teams\[0\]: rejected by the database"):
            load(db_url, data)
        assert export(db_url) == before


@pytest.mark.parametrize(
    "data",
    [[], "accounts", 1],
)
def test_top_level_must_be_a_mapping(sqlite_db: str, data: Any) -> None:
    with pytest.raises(RecordsError, match="mapping of kinds"), session_scope(sqlite_db) as s:
        import_records(s, data)


def test_load_file(tmp_path: Path) -> None:
    assert load_file(DEMO) == yaml.safe_load(DEMO.read_text())
    as_json = tmp_path / "demo.json"
    as_json.write_text(json.dumps(demo()))
    assert load_file(as_json) == demo()
    (tmp_path / "empty.yml").write_text("")
    assert load_file(tmp_path / "empty.yml") == {}
    faults = {
        "demo.txt": ("accounts: []", "expected a .yaml, .yml or .json file"),
        "bad.yaml": ("accounts: [", "not valid YAML"),
        "bad.json": ("{", "not valid JSON"),
        "list.yaml": ("- 1", "a records file is a mapping of kinds"),
    }
    for name, (content, message) in faults.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(RecordsError, match=message):
            load_file(tmp_path / name)
    with pytest.raises(RecordsError, match="cannot read"):
        load_file(tmp_path / "missing.yaml")


# --- API keys --------------------------------------------------------------------------------


def test_find_key(db_url: str) -> None:
    load(db_url, demo())
    with session_scope(db_url) as session:
        key = find_key(session, "demo-key")
        assert key is not None
        assert (key.account_id, key.name, key.person_id) == ("wdc", "demo", 301)
        assert find_key(session, "demo-key ") is None
        assert find_key(session, "wrong-key") is None
        assert find_key(session, "") is None

    with session_scope(db_url) as session:
        assert revoke_key(session, "demo-key") is Revoked.NOW
        assert revoke_key(session, "demo-key") is Revoked.ALREADY
    with session_scope(db_url) as session:
        assert find_key(session, "demo-key") is None
    # Importing the file again does not bring a revoked key back.
    load(db_url, demo())
    with session_scope(db_url) as session:
        assert find_key(session, "demo-key") is None
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 1


def test_create_and_revoke_keys(sqlite_db: str) -> None:
    load(sqlite_db, demo())
    with session_scope(sqlite_db) as session:
        plaintext = create_key(session, "wdc", "monitoring")
        assert len(plaintext) >= 43
        same = create_key(session, "wdc", "monitoring (renamed)", plaintext, person_id=303)
        assert same == plaintext
    with session_scope(sqlite_db) as session:
        keys = session.scalars(select(ApiKey).where(ApiKey.name.startswith("monitoring"))).all()
        assert len(keys) == 1
        assert keys[0].key_hash == hash_key(plaintext)
        assert (keys[0].name, keys[0].person_id) == ("monitoring (renamed)", 303)
        # Only the hash is stored.
        stored = [value for key in session.scalars(select(ApiKey)) for value in vars(key).values()]
        assert plaintext not in stored
        found = find_key(session, plaintext)
        assert found is not None
        key_id = found.id

        other = create_key(session, "wdc", "other")
        assert other != plaintext
        assert revoke_key(session, str(key_id)) is Revoked.NOW
        other_key = find_key(session, other)
        assert other_key is not None
        assert revoke_key(session, other_key.id) is Revoked.NOW
        assert revoke_key(session, other_key.id) is Revoked.ALREADY
        assert revoke_key(session, 12345) is Revoked.NO_SUCH_KEY
        for not_an_id in ("no-such-key", "²", "9" * 40):
            assert revoke_key(session, not_an_id) is Revoked.NO_SUCH_KEY
        assert find_key(session, plaintext) is None
        assert find_key(session, other) is None


def test_the_directory_remembers_accounts_that_do_not_exist_up_to_a_bound(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reference names such as ``HTTP@web-17`` ask for an account of every suffix: a process
    that lives for months keeps at most MAX_MISSES of those that do not exist."""
    monkeypatch.setattr(Directory, "MAX_MISSES", 50)
    directory = Directory(ttl=3600)
    with session_scope(sqlite_url) as session:
        assert directory.account(session, "wdc") is not None
        for number in range(1000):
            assert directory.account(session, f"web-{number}") is None
        assert 1 < directory.remembered() <= 51
