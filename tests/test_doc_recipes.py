"""The documentation's recipes, run as written (issue 10: "README examples are checked by a
test"): the README's examples of each API, and docs/api.md's one ``curl`` per Webex code and
the 4me seed examples (docs/mail.md's demo: tests/test_embedded.py).

Each runs against ``eventdesk run --demo`` in an empty folder, with ``python3 dev.py`` standing
for this checkout's ``eventdesk`` and the documented ports for free ones. In the code recipes each
line must print the code its comment names; an ``api … &`` line starts that api (in a session of
its own, stopped at the end) and waits for its port.
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
from itertools import takewhile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, wait_until
from tests.test_embedded import Service, call, clean_env, free_port

pytestmark = pytest.mark.slow

README = REPO / "README.md"
API = REPO / "docs" / "api.md"
CODE = re.compile(r"#\s*(\d{3,4})$")


def doc_block(doc: Path, after: str) -> list[str]:
    """The commands of the first ``sh`` block after the line starting with ``after`` in ``doc``,
    a line continued with a backslash joined to the next."""
    text = doc.read_text()
    start = text.index("```sh\n", text.index(after)) + len("```sh\n")
    return text[start:text.index("```", start)].replace("\\\n", "").splitlines()


def run_sh(command: str, folder: Path) -> str:
    return subprocess.run(["bash", "-c", command], cwd=folder, env=clean_env(),
                          capture_output=True, text=True, timeout=60, check=False).stdout


def outcome(service: Service, transid: str) -> Any:
    view = call(f"{service.base}/v1/transactions/{transid}")[1]
    return view["outcome"] if view["status"] == "completed" else None


def subject_of(service: Service, transid: str) -> str:
    request_id = wait_until(partial(outcome, service, transid), 60, 0.2)["request_id"]
    return str(call(f"{service.base}/v1/requests/{request_id}")[1]["subject"])


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
    lines = doc_block(API, "One `curl` per code")
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
            assert expected, f"a recipe line without its code: {line}"
            code = expected[1]
            output = run_sh(f"{preamble}\n{command}", tmp_path)
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


def test_the_readme_examples_make_the_requests_they_say(tmp_path: Path) -> None:
    """The README's examples, as written: two Webex events, two requests named by host; then
    the 4me Events API's and the Mail API's, each queued and made into its request."""
    # The first command spans lines (its JSON body too), up to the answer's comment.
    post = "\n".join(takewhile(lambda line: not line.startswith("#"),
                               doc_block(README, "With it running, send an event:")))
    brief = [line for line in doc_block(README, "The same through the **4me Events API**")
             if not line.startswith("#")]
    service = Service(tmp_path)
    try:
        wait_until(service.up, 60, 0.3)
        here = f"localhost:{service.port}"
        answers = json.loads(run_sh(post.replace("localhost:8000", here), tmp_path))["response"]
        assert [answer["code"] for answer in answers] == ["1002", "1002"], answers
        assert [subject_of(service, answer["transid"]) for answer in answers] == [
            "db1 is down", "web7 is down"]

        queued = [json.loads(run_sh(line.replace("localhost:8000", here), tmp_path))
                  for line in brief]
        assert [answer["status"] for answer in queued] == ["queued", "queued"], queued
        assert [subject_of(service, answer["transid"]) for answer in queued] == [
            "Disk full", "Screen black"]
    finally:
        service.stop()


def test_the_4me_seed_examples_answer_as_documented(tmp_path: Path) -> None:
    """202 as written; sent again with ``Prefer: wait``, the request they made (event
    matching: 200 with the same request)."""
    lines = doc_block(API, "The seed's examples, against `run --demo`:")
    preamble, curls = lines[0], [line for line in lines[1:] if line.startswith("curl")]
    service = Service(tmp_path)
    try:
        wait_until(service.up, 60, 0.3)

        def status(command: str) -> tuple[int, Any]:
            command = command.replace("localhost:8000", f"localhost:{service.port}")
            output = run_sh(f"{preamble}\n{command}", tmp_path)
            head, _, body = output.replace("\r\n", "\n").partition("\n\n")
            return int(head.split()[1]), json.loads(body)

        assert [status(curl)[0] for curl in curls] == [202, 202, 202]
        waited = [status(curl.replace("-i ", '-i -H "Prefer: wait=10" ')) for curl in curls]
        assert [code for code, _ in waited] == [200, 200, 200], waited
        assert all(body["id"] for _, body in waited)
    finally:
        service.stop()
