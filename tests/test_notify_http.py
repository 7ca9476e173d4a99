"""The notify sender's HTTP/1.1 (shared/notify/http.py) against receivers that answer in every
framing HTTP allows, and some that break it: what is recorded, and when a connection is kept."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest

from shared.notify.http import RESPONSE_KEEP, AttemptResult, Sender, parse
from shared.notify.ssrf import parse_networks

LOCALHOST = parse_networks("127.0.0.0/8")


class Scripted:
    """A receiver that answers each request with the next of ``answers`` (raw bytes; None: hang
    up without answering), and counts the connections it accepted."""

    def __init__(self, *answers: bytes | None) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(client,), daemon=True).start()

    def _answer(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError):  # the sender ended it mid-answer (long body)
            buffer = b""
            while self.answers:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(buffer) < length:
                    buffer += client.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                answer = self.answers.pop(0)
                if answer is None:
                    return
                client.sendall(answer)
                lowered = answer.lower()
                if b"connection: close" in lowered or b"http/1.0" in lowered or (
                        b"content-length" not in lowered and b"chunked" not in lowered):
                    return

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def scripted() -> Iterator[type[Scripted]]:
    made: list[Scripted] = []

    class Made(Scripted):
        def __init__(self, *answers: bytes | None) -> None:
            super().__init__(*answers)
            made.append(self)

    yield Made
    for server in made:
        server.close()


def post_all(url: str, count: int) -> list[AttemptResult]:
    """``count`` POSTs in turn on one lane of one Sender."""
    async def run() -> list[AttemptResult]:
        async with Sender(connect_timeout=1, read_timeout=1, allow=LOCALHOST) as sender:
            return [await sender.post(url, b'{"n":%d}' % n, {"webhook-id": "msg_1"})
                    for n in range(count)]

    return asyncio.run(run())


def test_a_kept_alive_connection_carries_every_post(scripted: type[Scripted]) -> None:
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    receiver = scripted(*[ok] * 5)
    results = post_all(receiver.url, 5)
    assert [(r.status_code, r.response) for r in results] == [(200, "ok")] * 5
    assert receiver.connections == 1
    head = receiver.requests[0].split(b"\r\n")
    assert head[0] == b"POST /hook HTTP/1.1"
    assert f"host: {receiver.url.split('/')[2]}".encode() in head
    assert b"webhook-id: msg_1" in head
    assert receiver.requests[4].endswith(b'{"n":4}')


def test_a_chunked_answer_is_read_and_the_connection_kept(scripted: type[Scripted]) -> None:
    chunked = (b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n"
               b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n")
    receiver = scripted(chunked, chunked)
    results = post_all(receiver.url, 2)
    assert [(r.status_code, r.response) for r in results] == [(202, "abcde")] * 2
    assert receiver.connections == 1


def test_informational_answers_are_skipped_and_retry_after_is_read(
    scripted: type[Scripted],
) -> None:
    receiver = scripted(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nRetry-After: 7\r\n"
                        b"Content-Length: 0\r\n\r\n")
    (result,) = post_all(receiver.url, 1)
    assert (result.status_code, result.retry_after, result.error) == (503, "7", None)


def test_a_long_body_is_cut_and_its_connection_ended(scripted: type[Scripted]) -> None:
    long = b"x" * (200 * 1024)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(long), long)
    receiver = scripted(answer, answer)
    results = post_all(receiver.url, 2)
    assert [len(r.response or "") for r in results] == [RESPONSE_KEEP] * 2
    assert receiver.connections == 2


def test_an_answer_ended_by_closing_and_connection_close_are_not_reused(
    scripted: type[Scripted],
) -> None:
    receiver = scripted(b"HTTP/1.1 200 OK\r\n\r\nbye",
                        b"HTTP/1.1 201 Created\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                        b"HTTP/1.0 204 No Content\r\n\r\n")
    results = post_all(receiver.url, 3)
    assert [(r.status_code, r.response) for r in results] == [(200, "bye"), (201, ""), (204, "")]
    assert receiver.connections == 3


@pytest.mark.parametrize("answer", [None, b"SMTP ready\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad\r\n\r\n"])
def test_no_answer_or_not_http_is_a_remote_protocol_error(
    scripted: type[Scripted], answer: bytes | None,
) -> None:
    receiver = scripted(answer)
    (result,) = post_all(receiver.url, 1)
    assert (result.status_code, result.error, result.address) == (
        None, "RemoteProtocolError", "127.0.0.1")


def test_a_header_with_a_line_break_is_never_written(scripted: type[Scripted]) -> None:
    receiver = scripted()

    async def run() -> AttemptResult:
        async with Sender(connect_timeout=1, read_timeout=1, allow=LOCALHOST) as sender:
            return await sender.post(receiver.url, b"{}", {"x-a": "1\r\nx-b: 2"})

    result = asyncio.run(run())
    assert result.error == "LocalProtocolError"
    assert receiver.connections == 0


@pytest.mark.parametrize("length", [b"-5", b"+5", b"1_0"])
def test_a_content_length_that_is_not_digits_is_a_remote_protocol_error(
    scripted: type[Scripted], length: bytes,
) -> None:
    receiver = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: %s\r\n\r\nabcdefghij" % length)
    (result,) = post_all(receiver.url, 1)
    assert (result.status_code, result.error) == (None, "RemoteProtocolError")


def test_a_huge_chunk_is_not_read_and_its_connection_ended(scripted: type[Scripted]) -> None:
    # A chunk announced at 4 GB: the sender takes the status and leaves, reading none of it.
    huge = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nFFFFFFFF\r\n" + b"x" * 1024
    receiver = scripted(huge, huge)
    results = post_all(receiver.url, 2)
    assert [r.status_code for r in results] == [200, 200]
    assert receiver.connections == 2


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b""])
def test_a_chunk_size_that_is_not_hex_digits_is_a_remote_protocol_error(
    scripted: type[Scripted], size: bytes,
) -> None:
    receiver = scripted(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%s\r\nabcde\r\n"
                        b"0\r\n\r\n" % size)
    (result,) = post_all(receiver.url, 1)
    assert (result.status_code, result.error) == (None, "RemoteProtocolError")


def test_an_internationalised_url_is_written_as_ascii() -> None:
    target = parse("http://bücher.example:8080/hooks/ü ber?name=é")
    assert target.request == (b"POST /hooks/%C3%BC%20ber?name=%C3%A9 HTTP/1.1\r\n"
                              b"host: xn--bcher-kva.example:8080\r\n")
    assert (target.host, target.port) == ("bücher.example", 8080)


def test_a_receiver_whose_dns_is_slow_holds_up_no_other_receiver(
        scripted: type[Scripted]) -> None:
    """Its lanes wait on one lookup at a time (each giving up at the connect timeout), so the
    threads that lookups run in stay free for the other receivers."""
    fast = scripted(*[b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"] * 4)
    port = fast.server.getsockname()[1]
    answered = threading.Event()  # the slow name's resolver answers only at the end
    slow_running, slow_most = 0, 0
    guard = threading.Lock()

    def resolve(host: str, _: int) -> list[IPv4Address]:
        nonlocal slow_running, slow_most
        if host == "slow.test":
            with guard:
                slow_running += 1
                slow_most = max(slow_most, slow_running)
            answered.wait(30)
            with guard:
                slow_running -= 1
        return [IPv4Address("127.0.0.1")]

    async def run() -> tuple[list[AttemptResult], list[AttemptResult]]:
        async with Sender(connect_timeout=0.5, read_timeout=1, allow=LOCALHOST,
                          resolve=resolve) as sender:
            def posts(host: str, lanes: int) -> list[Coroutine[Any, Any, AttemptResult]]:
                return [sender.post(f"http://{host}:{port}/hook", b"{}", {}, lane)
                        for lane in range(lanes)]

            try:
                slow = await asyncio.gather(*posts("slow.test", 16))
                slow += await asyncio.gather(*posts("slow.test", 16))  # the lookup still runs
                return slow, await asyncio.gather(*posts("fast.test", 4))
            finally:
                answered.set()

    slow, others = asyncio.run(run())
    assert {result.error for result in slow} == {"NameResolutionError"}
    assert [result.status_code for result in others] == [200] * 4
    assert slow_most == 1
