"""The package as a user gets it: built from its own pyproject.toml with no warning (issue 10,
item 13), and working installed from the wheel, outside the checkout (issue 11, item 8)."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_until
from tests.test_embedded import Service, clean_env, the_curl_becomes_a_request

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Built:
    wheel: Path
    output: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    folder = tmp_path_factory.mktemp("wheel")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "--wheel-dir", str(folder), str(REPO)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (wheel,) = folder.glob("eventdesk-*.whl")
    return Built(wheel, run.stdout + run.stderr)


def test_building_the_package_gives_no_warnings(built: Built) -> None:
    # Python warnings (SetuptoolsDeprecationWarning, BuildBackendWarning...) and deprecation
    # notices; pip's own "WARNING:" lines are about the machine's index settings, not ours.
    warned = [line for line in built.output.splitlines()
              if re.search(r"[a-z]Warning\b|deprecat", line, re.IGNORECASE)
              and not line.startswith("WARNING:")]
    assert warned == []


def test_the_installed_wheel_runs_the_demo_outside_the_checkout(
    built: Built, tmp_path: Path
) -> None:
    """What the Docker image does: ``pip install .`` into a fresh environment, then
    ``eventdesk run --demo`` in a folder that is not the checkout, with nothing of it on the
    path: the demo records, the migrations and every role must come from the package."""
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    installed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         str(built.wheel)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {name: value for name, value in clean_env().items() if name != "PYTHONPATH"}
    service = Service(elsewhere, env=env, eventdesk=(str(bin_dir / "eventdesk"),))
    try:
        wait_until(service.up, 90, 0.3)
        the_curl_becomes_a_request(service)
    finally:
        service.stop()
