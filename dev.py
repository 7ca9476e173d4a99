#!/usr/bin/env python3
"""Quick start without installing anything by hand: it makes ./.venv, installs eventdesk into it
(again only when pyproject.toml changed), then runs the command.

    python3 dev.py run --demo     # the whole service on SQLite + an embedded broker
    python3 dev.py test           # lint, type check and the test suite
    python3 dev.py <any eventdesk command>

Needs only Python 3.11+.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".eventdesk-installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file may be run by an older Python
        sys.exit("eventdesk needs Python 3.11 or newer")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    print("installing eventdesk and its dependencies into .venv ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def run(*command: str) -> int:
    return subprocess.run(command, cwd=ROOT, check=False).returncode


def test(extra: list[str]) -> int:
    python = str(BIN / "python")
    for step in (
        [python, "-m", "ruff", "check", "."],
        [python, "-m", "mypy"],
    ):
        print("$", " ".join(step[1:]), flush=True)
        if run(*step):
            return 1
    workers = os.environ.get("EVENTDESK_TEST_WORKERS", "2")
    pytest = [python, "-m", "pytest", "-n", workers, "--dist", "loadgroup"]
    if extra:
        return run(*pytest, *extra)
    # The fault scenarios (tests/resilience/) run after the rest, not beside it: each loads
    # both cores with its own api, workers and stream, which would starve the timed waits of
    # the other tests (and theirs).
    return run(*pytest, "-m", "not resilience") or run(*pytest, "-m", "resilience")


def main() -> int:  # noqa: RET503 - the last branch execs
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    ensure_venv()
    if args[0] == "test":
        return test(args[1:])
    os.execv(str(BIN / "eventdesk"), [str(BIN / "eventdesk"), *args])


if __name__ == "__main__":
    sys.exit(main())
