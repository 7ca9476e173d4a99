"""The contract with aiosmtpd's private ``SMTP._getaddr`` and ``SMTP._reset_timeout`` that
api/smtp.py's listener overrides: to read the addresses of MAIL and RCPT for less (aiosmtpd must
still read them through it, and the override must answer every path as aiosmtpd's own does),
and to keep one idle timer a session (aiosmtpd must still reset it at every command, and an
idle session must still end after the timeout, a busy one not before). The sessions run on the
listener's loop, uvloop's: the timer and a client's end of stream are held to what uvloop does.

Each test names what an upgrade removed or changed.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import random
import re
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from api.smtp import PeerLimitedSMTP, new_loop
from tests.conftest import self_signed, wait_until

PATHS = [
    "<ellen.brown@widget.com>", "<wdc@mail.eventdesk.local> SIZE=500",
    "<a@b>   SIZE=5  BODY=8BITMIME", "<a@b>\tSIZE=5", "<a@b>SIZE=5", "<A.B@Ex-ample.COM>",
    "<a@b> ", "<a@b> SIZE=1 ", "<x+tag!#$%&'*/=?^_`{|}~-@host-1.example>", "<a@-b>",
    "<a..b@c>", "<.a@b>", "<a@b.>", "<a@.b>", '<"quoted local"@b>', "<a@[192.0.2.1]>",
    "<a(comment)@b>", "< a@b >", "<a@b> (comment) SIZE=1", "<é@b>", "<a@é.example>", "a@b",
    "a@b SIZE=1", "<>", "<a@b>\x00", "<a@b>\nX", "<a@b> \x1c", "<a@b@c>", "<a@b", "a@b>", "",
    "<" + "x" * 65 + "@b>", "<a_b@c_d>",
]


def listener() -> PeerLimitedSMTP:
    return PeerLimitedSMTP(object(), connections=Counter(), limit=1)  # type: ignore[arg-type]


def assert_called_through(name: str, parameters: list[str], *callers: Any) -> None:
    """aiosmtpd's ``callers`` still call ``SMTP.<name>``, whose parameters are still these."""
    for caller in callers:
        assert f"self.{name}(" in inspect.getsource(caller), \
            f"aiosmtpd's {caller.__name__} no longer calls SMTP.{name}"
    assert list(inspect.signature(getattr(SMTP, name)).parameters) == parameters, \
        f"SMTP.{name}({', '.join(parameters)}) changed its signature"


def test_aiosmtpd_reads_mail_and_rcpt_addresses_through_getaddr() -> None:
    assert_called_through("_getaddr", ["self", "arg"], SMTP.smtp_MAIL, SMTP.smtp_RCPT)


def fuzzed(count: int) -> list[str]:
    """Paths built from the characters where the two readings could part."""
    pieces = ["<", ">", "@", ".", "a", "Z", "0", "-", "_", "+", " ", "\t", "(", ")", '"', "[",
              "]", "\\", "é", "SIZE=1", "x.y", "@b.c>", "<a@b>"]
    chooser = random.Random(20261130)
    return ["".join(chooser.choice(pieces) for _ in range(chooser.randint(1, 12)))
            for _ in range(count)]


def reading(session: SMTP, path: str) -> object:
    """What ``_getaddr`` answers, or the kind of error it raises (aiosmtpd's parse raises on a
    few malformed paths, and its session answers those with a 500)."""
    try:
        return session._getaddr(path)
    except Exception as exc:  # the kind is the answer here
        return type(exc)


@pytest.mark.parametrize("local_part_limit", [0, 64])
def test_the_listener_reads_every_path_as_aiosmtpd_does(local_part_limit: int) -> None:
    ours, theirs = listener(), SMTP(object())
    ours.local_part_limit = theirs.local_part_limit = local_part_limit
    for path in PATHS + fuzzed(5000):
        assert reading(ours, path) == reading(theirs, path), repr(path)


def test_a_plain_path_is_read_without_aiosmtpd(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the override: the form MTAs write costs no header parse."""
    def refuse(*_: Any) -> None:
        raise AssertionError("aiosmtpd's parse was used")

    monkeypatch.setattr(SMTP, "_getaddr", refuse)
    assert listener()._getaddr("<ellen.brown@widget.com> SIZE=500") == (
        "ellen.brown@widget.com", "SIZE=500")


def test_aiosmtpd_resets_its_idle_timer_at_every_command_through_reset_timeout() -> None:
    assert_called_through("_reset_timeout", ["self", "duration"], SMTP.connection_made,
                          SMTP._handle_client)
    assert "self._timeout_handle.cancel()" in inspect.getsource(SMTP.connection_lost), \
        "aiosmtpd's connection_lost no longer cancels SMTP._timeout_handle"
    session = SMTP(object(), timeout=7)
    assert session._timeout_duration == 7, "SMTP._timeout_duration no longer holds the timeout"
    assert callable(session._timeout_cb), "SMTP._timeout_cb is gone"


IDLE_S = 1.0


@contextmanager
def serving(session: Callable[[], PeerLimitedSMTP]) -> Iterator[int]:
    """Sessions made by ``session`` on a loop of their own, the listener's kind: the port. At
    the end, the connections still open are closed and their ends awaited before the loop
    closes (uvloop's close once failed, EBUSY, beside a connection left half-open)."""
    loop = new_loop()
    made: list[PeerLimitedSMTP] = []

    def make() -> PeerLimitedSMTP:
        made.append(session())
        return made[-1]

    server = loop.run_until_complete(loop.create_server(make, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        async def shut() -> None:
            server.close()
            for open_session in made:
                if open_session.transport is not None:
                    open_session.transport.close()
            while any(open_session.transport is not None for open_session in made):
                await asyncio.sleep(0.01)  # connection_lost comes at a later turn of the loop
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture(scope="module")
def idle_listener() -> Iterator[int]:
    """The listener's session class, with a short idle timeout."""
    with serving(lambda: PeerLimitedSMTP(
            object(), connections=Counter(), limit=10, timeout=IDLE_S)) as port:  # type: ignore[arg-type]
        yield port


def answer(connection: socket.socket) -> bytes:
    """One reply line, or b"" once the listener closed the connection."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = connection.recv(1024)
        if not chunk:
            return data
        data += chunk
    return data


def test_a_busy_session_outlives_the_timeout_and_an_idle_one_ends_after_it(
        idle_listener: int) -> None:
    with socket.create_connection(("127.0.0.1", idle_listener), timeout=10) as connection:
        assert answer(connection).startswith(b"220")
        until = time.monotonic() + 2 * IDLE_S
        while time.monotonic() < until:  # a command every fifth of the timeout
            connection.sendall(b"NOOP\r\n")
            assert answer(connection).startswith(b"250"), "a busy session was closed"
            time.sleep(IDLE_S / 5)
        last = time.monotonic()
        connection.sendall(b"NOOP\r\n")
        assert answer(connection).startswith(b"250")
        while answer(connection):  # the listener closes it: recv gives b""
            pass
        idle = time.monotonic() - last
    assert IDLE_S * 0.9 <= idle < IDLE_S + 2, f"closed after {idle:.2f} s idle"


def test_the_listener_runs_on_uvloop_but_on_windows() -> None:
    """The listener's speed (bench/mail.py) counts on it: a dependency lost says so here."""
    loop = new_loop()
    loop.close()
    assert type(loop).__module__.startswith("uvloop") or sys.platform == "win32", type(loop)


def test_a_timer_that_goes_off_a_hair_before_the_deadline_still_lets_commands_move_it() -> None:
    """uvloop's timers count milliseconds: one can go off just before its deadline, and the
    rest is then set with under half a millisecond to go, which uvloop rounds to nothing and
    answers with a handle that cannot tell its time. The session's next command must still
    move its deadline."""
    loop = new_loop()
    try:
        session = PeerLimitedSMTP(object(), connections=Counter(), limit=1,  # type: ignore[arg-type]
                                  loop=loop, timeout=60)
        session._reset_timeout()
        session._deadline = loop.time() + 0.0002  # the timer goes off 0.2 ms early
        session._on_timer()
        session._reset_timeout()  # a command
        assert session._deadline > loop.time() + 59, "the command did not move the deadline"
    finally:
        loop.close()


TLS_IDLE_S = 3.0  # room for the checks made while a session stalls, on a loaded machine


@pytest.fixture
def tls_listener(tmp_path: Path) -> Iterator[int]:
    """The listener's session class with STARTTLS, one place for a peer, a short idle timeout."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    places: Counter[str] = Counter()  # shared by the sessions, as the listener's
    with serving(lambda: PeerLimitedSMTP(
            object(), connections=places, limit=1, tls_context=context,  # type: ignore[arg-type]
            timeout=TLS_IDLE_S)) as port:
        yield port


def starttls(connection: socket.socket) -> bytes:
    """EHLO, then STARTTLS: the answer to it."""
    connection.sendall(b"EHLO client\r\n")
    ehlo = b""
    while not re.search(rb"(^|\n)250 [^\n]*\n$", ehlo):  # up to its last line
        more = answer(connection)
        assert more, f"closed after {ehlo!r}"
        ehlo += more
    connection.sendall(b"STARTTLS\r\n")
    return answer(connection)


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        return answer(connection)


class LateHandler(PeerLimitedSMTP):
    """A session whose handler begins late: on uvloop, a client's end is often read before the
    handler's first step."""

    async def _handle_client(self) -> None:
        await asyncio.sleep(0.2)
        await super()._handle_client()


def test_a_client_that_connects_and_closes_at_once_frees_its_place_at_once() -> None:
    """A TCP health check (a load balancer's, a kubelet's) connects and closes; its place must
    not wait for the idle timeout, or a few checks lock the peer out (421)."""
    places: Counter[str] = Counter()  # shared by the sessions, as the listener's
    made: list[LateHandler] = []

    def session() -> LateHandler:
        made.append(LateHandler(object(), connections=places, limit=1,  # type: ignore[arg-type]
                                timeout=60))
        return made[-1]

    gc.disable()  # the listener frees it, not the collector (that reclaims a forgotten one)
    try:
        with serving(session) as port:
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
            wait_until(lambda: made, 5)  # the listener has taken the connection
            wait_until(lambda: greeting(port).startswith(b"220"), 5)
    finally:
        gc.enable()


def test_a_session_silent_mid_tls_handshake_ends_after_the_timeout_and_frees_its_place(
        tls_listener: int) -> None:
    """Python's TLS layer closed mid-handshake tells aiosmtpd neither of a failure nor of a lost
    connection: the session must still end, and its peer's place come free."""
    with socket.create_connection(("127.0.0.1", tls_listener), timeout=10) as stalled:
        assert answer(stalled).startswith(b"220")
        assert starttls(stalled).startswith(b"220")
        # The client now goes silent instead of starting the handshake.
        assert greeting(tls_listener).startswith(b"421"), "the stalled session has the place"
        wait_until(lambda: greeting(tls_listener).startswith(b"220"), 5 * TLS_IDLE_S, 0.1)
        assert answer(stalled) == b"", "the stalled session is closed"


def test_starttls_inside_tls_is_refused(tls_listener: int) -> None:
    """RFC 3207 4.2; a second handshake, stalled, would hold its place unseen."""
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", tls_listener), timeout=10) as plain:
        assert answer(plain).startswith(b"220")
        assert starttls(plain).startswith(b"220")
        with client.wrap_socket(plain) as secure:
            assert starttls(secure).startswith(b"554")
            secure.sendall(b"HELP STARTTLS\r\n")
            assert answer(secure).startswith(b"250 Syntax: STARTTLS")
