"""The ``eventdesk`` chores a user runs: migrate, records import, keys create and revoke."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from click.testing import CliRunner

from api import create_app
from shared.cli import main
from tests.conftest import DEMO

EVENT = {"events": [{"evtid": "server-down", "parameters": {"host": "db1"}}]}


def created_key(output: str) -> tuple[int, str]:
    """The id and the key that ``keys create`` printed."""
    lines = dict(line.split(": ", 1) for line in output.splitlines())
    assert set(lines) == {"id", "key"}, output
    return int(lines["id"]), lines["key"]


def refused(*args: str) -> str:
    """The output of a command that must fail with a one-line error (exit status 1)."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: ")
    return result.output


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_records_import_is_idempotent_and_keys_work(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    # The embedded defaults: SQLite and kombu's SQLAlchemy transport, files in the data dir.
    configure(cache_ttl_seconds=0)
    invoke("migrate")
    first = invoke("records", "import", str(DEMO))
    assert "accounts: " in first
    assert invoke("records", "import", str(DEMO)) == first
    exported = yaml.safe_load(invoke("records", "export"))
    assert [a["id"] for a in exported["accounts"] if a["id"] == "wdc"] == ["wdc"]
    assert "key" not in str(exported["api_keys"])

    key = created_key(invoke("keys", "create", "--account", "wdc", "--name", "ci"))[1]
    assert len(key) >= 32
    client = create_app().test_client()
    answer = client.post("/resources/v1/events/externalevent/", json=EVENT,
                         headers={"key": key})
    assert answer.status_code == 200
    assert answer.get_json()["response"][0]["code"] == "1002"

    assert invoke("keys", "revoke", key).strip() == "revoked"
    answer = client.post("/resources/v1/events/externalevent/", json=EVENT,
                         headers={"key": key})
    assert (answer.status_code, answer.get_json()["response"][0]["code"]) == (401, "7001")


def test_bad_records_file_is_a_clear_error(configure: Callable[..., None], tmp_path: Path) -> None:
    configure()
    invoke("migrate")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teams:\n  - id: 1\n    account: nowhere\n    name: Ghosts\n")
    result = CliRunner().invoke(main, ["records", "import", str(bad)])
    assert result.exit_code == 1
    assert "teams" in result.output
    assert "Traceback" not in result.output


def test_records_import_names_the_line_and_imports_nothing(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    configure()
    invoke("migrate")
    lines = DEMO.read_text().splitlines()
    # The demo's second person, given the first one's primary email in other letters.
    at = lines.index("    primary_email: ellen.brown@widget.com")
    lines[at] = "    primary_email: Howard.Tanner@WIDGET.com"
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n".join(lines))
    person_line = next(n for n in range(at, 0, -1) if lines[n].startswith("  - ")) + 1
    output = refused("records", "import", str(bad))
    assert f"{bad}, line {person_line}: people[1].primary_email: person 301" in output
    assert invoke("records", "export").count("account:") == 0


def test_keys_create_prints_the_id_and_refuses_unknown_account_or_person(
    configure: Callable[..., None]
) -> None:
    configure()
    invoke("migrate")
    invoke("records", "import", str(DEMO))
    key_id, key = created_key(
        invoke("keys", "create", "--account", "wdc", "--name", "tool", "--person-id", "301"))
    assert invoke("keys", "revoke", str(key_id)).strip() == "revoked"

    assert "no account 'nowhere'" in refused("keys", "create", "--account", "nowhere",
                                             "--name", "x")
    assert "no person 999" in refused("keys", "create", "--account", "wdc", "--name", "x",
                                      "--person-id", "999")
    # A person of the directory account acts for its accounts; not the other way round.
    _, on_directory = created_key(invoke("keys", "create", "--account", "widget", "--name", "d"))
    assert on_directory != key
    assert "no person 301" in refused("keys", "create", "--account", "widget", "--name", "x",
                                      "--person-id", "301")
    # Nothing was written by the refusals.
    assert [line.split()[2] for line in invoke("keys", "list").splitlines()[1:]] == [
        "demo", "tool", "d"]


def test_keys_list_shows_id_account_name_person_created_revoked(
    configure: Callable[..., None]
) -> None:
    configure()
    invoke("migrate")
    invoke("records", "import", str(DEMO))
    key_id, _ = created_key(invoke("keys", "create", "--account", "wdc", "--name", "nagios"))
    invoke("keys", "revoke", "demo-key")
    header, *rows = [line.split() for line in invoke("keys", "list").splitlines()]
    assert header == ["id", "account", "name", "person", "created", "revoked"]
    demo, nagios = rows
    assert demo[1:4] == ["wdc", "demo", "301"]
    assert demo[5].endswith("Z")
    assert nagios[:4] == [str(key_id), "wdc", "nagios", "-"]
    assert nagios[4].endswith("Z")
    assert nagios[5] == "-"
    assert invoke("keys", "list", "--account", "widget").splitlines()[1:] == []


def test_revoking_a_revoked_key_says_so_and_succeeds(configure: Callable[..., None]) -> None:
    configure()
    invoke("migrate")
    invoke("records", "import", str(DEMO))
    assert invoke("keys", "revoke", "demo-key").strip() == "revoked"
    assert invoke("keys", "revoke", "demo-key").strip() == "already revoked"
    for unknown in ("no-such-key", "12345", "²", "9" * 40):
        assert "no such key" in refused("keys", "revoke", unknown)
