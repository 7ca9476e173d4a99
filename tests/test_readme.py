"""The README's recipes, run as written (issue 10: "README examples are checked by a test").

The block of one ``curl`` per Webex code runs line by line against ``eventdesk run --demo`` in
an empty folder, with ``python3 dev.py`` standing for this checkout's ``eventdesk`` and the
README's ports for free ones; each line must print the code its comment names. An ``api … &``
line starts that api (in a session of its own, stopped at the end) and waits for its port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, wait_until
from tests.test_embedded import Service, call, clean_env, free_port

pytestmark = pytest.mark.slow

README = REPO / "README.md"
CODE = re.compile(r"#\s*(\d{3,4})$")


def readme_block(after: str) -> list[str]:
    """The lines of the first ``sh`` block after the line starting with ``after``."""
    text = README.read_text()
    start = text.index("```sh\n", text.index(after)) + len("```sh\n")
    return text[start:text.index("```", start)].splitlines()


def port_answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_every_webex_code_recipe_gives_its_code(
    tmp_path: Path, background: list[subprocess.Popen[bytes]]
) -> None:
    lines = readme_block("One `curl` per code")
    service = Service(tmp_path)
    try:
        wait_until(service.up, 60, 0.3)
        ports = {"8000": str(service.port), "8001": str(free_port()), "8002": str(free_port())}

        def as_here(line: str) -> str:
            line = line.replace("python3 dev.py", f"{shlex.quote(sys.executable)} -m shared.cli")
            return re.sub(r"(localhost:|--port )(800[012])\b",
                          lambda match: match[1] + ports[match[2]], line)

        preamble, checked = as_here(lines[0]), []
        for line in lines[1:]:
            if not line or line.startswith("#"):
                continue
            command = as_here(line)
            if command.endswith("&"):
                background.append(subprocess.Popen(
                    ["bash", "-c", command[:-1]], cwd=tmp_path, env=clean_env(),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True))
                port = int(re.findall(r"--port (\d+)", command)[0])
                wait_until(partial(port_answers, port), 60, 0.2)
                continue
            expected = CODE.search(line)
            assert expected, f"a README recipe line without its code: {line}"
            code = expected[1]
            output = subprocess.run(
                ["bash", "-c", f"{preamble}\n{command}"], cwd=tmp_path, env=clean_env(),
                capture_output=True, text=True, timeout=60, check=False).stdout
            if len(code) == 3:  # an HTTP status, as curl -w prints it
                assert output.strip() == code, (line, output)
            else:
                assert f'"code": "{code}"' in output, (line, output)
            checked.append(code)
    finally:
        service.proc.send_signal(signal.SIGTERM)
        service.proc.wait(40)
        service.log.close()
    assert sorted(checked) == sorted(
        ["1002", "7000", "7001", "7003", "7004", "7005", "7020", "7025", "7027", "413"])


def test_the_quick_start_example_makes_a_request_per_host(tmp_path: Path) -> None:
    """The first example of the README, as written: two events, two requests named by host."""
    first = readme_block("With it running, send an event:")
    post = "\n".join(first[:first.index(next(line for line in first if line.startswith("#")))])
    service = Service(tmp_path)
    try:
        wait_until(service.up, 60, 0.3)
        output = subprocess.run(
            ["bash", "-c", post.replace("localhost:8000", f"localhost:{service.port}")],
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
            check=False).stdout
        answers = json.loads(output)["response"]
        assert [answer["code"] for answer in answers] == ["1002", "1002"], output

        def outcome(transid: str) -> Any:
            view = call(f"{service.base}/v1/transactions/{transid}")[1]
            return view["outcome"] if view["status"] == "completed" else None

        subjects = []
        for answer in answers:
            request_id = wait_until(partial(outcome, answer["transid"]), 60, 0.2)["request_id"]
            subjects.append(call(f"{service.base}/v1/requests/{request_id}")[1]["subject"])
        assert subjects == ["db1 is down", "web7 is down"]
    finally:
        service.stop()


def test_the_4me_seed_examples_answer_as_the_readme_says(tmp_path: Path) -> None:
    """202 as written; sent again with ``Prefer: wait``, the request they made (event
    matching: 200 with the same request)."""
    lines = readme_block("The seed's examples, against `run --demo`:")
    preamble, curls = lines[0], [line for line in lines[1:] if line.startswith("curl")]
    service = Service(tmp_path)
    try:
        wait_until(service.up, 60, 0.3)

        def status(command: str) -> tuple[int, Any]:
            command = command.replace("localhost:8000", f"localhost:{service.port}")
            output = subprocess.run(
                ["bash", "-c", f"{preamble}\n{command}"], cwd=tmp_path, env=clean_env(),
                capture_output=True, text=True, timeout=60, check=False).stdout
            head, _, body = output.replace("\r\n", "\n").partition("\n\n")
            return int(head.split()[1]), json.loads(body)

        assert [status(curl)[0] for curl in curls] == [202, 202, 202]
        waited = [status(curl.replace("-i ", '-i -H "Prefer: wait=10" ')) for curl in curls]
        assert [code for code, _ in waited] == [200, 200, 200], waited
        assert all(body["id"] for _, body in waited)
    finally:
        service.stop()
