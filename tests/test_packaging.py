"""Building the project from its own pyproject.toml warns of nothing (issue 10, item 13)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_building_the_package_gives_no_warnings(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "--wheel-dir", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    # Python warnings (SetuptoolsDeprecationWarning, BuildBackendWarning...) and deprecation
    # notices; pip's own "WARNING:" lines are about the machine's index settings, not ours.
    warned = [line for line in (built.stdout + built.stderr).splitlines()
              if re.search(r"[a-z]Warning\b|deprecat", line, re.IGNORECASE)
              and not line.startswith("WARNING:")]
    assert warned == []
