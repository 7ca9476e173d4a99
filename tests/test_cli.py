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

    key = invoke("keys", "create", "--account", "wdc", "--name", "ci").strip()
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
