"""POSTs to notify URLs, through the SSRF guard, within a hard time limit. No database here.

:class:`Sender` is one process's client: asyncio, with keep-alive connections per receiver, so
hundreds of POSTs are in flight at once without a thread each. HTTP/1.1 is spoken by this module
itself, on an asyncio protocol (:class:`_Connection`): a notify POST needs a small part of it
(one request at a time on a connection, the status, two headers and the first 1 KB of the
answer), and the general clients cost more CPU than the rest of a delivery (httpcore's h11
state machine and anyio's layers: bench/README.md, "bench/notify.py").

The guard sits where a connection is made (:func:`_connect`): the host is resolved once, every
address it resolves to is checked (``shared/notify/ssrf.py``), and the connection is made to one
of those checked addresses. The URL is untouched, so the request keeps its ``Host`` header, and
TLS still sends the host name as SNI and verifies the certificate against it (asyncio wraps the
connected socket with ``server_hostname`` = the URL's host). Checking a name first and letting
something else resolve it again to connect would let a DNS answer change in between (rebinding);
here there is no second resolution. A kept-alive connection stays on the address that was
checked when it was made. No proxy is ever used: through a proxy, the address connected to would
be the proxy's.

Timeouts: ``connect`` for name resolution and each TCP connect (and the TLS handshake), ``read``
for each wait for the receiver's bytes, and a deadline for the whole attempt
(``connect + read``): a receiver that drips one byte every few seconds cannot hold a lane, or
outlive the delivery's lease, however slowly it answers. Past the deadline the attempt is
cancelled, which closes its connection.

Redirects are not followed (a 3xx is an answer like any other), informational (1xx) answers are
skipped, and only the first 1 KB of a response body is kept: a longer body, or one whose length
is known only when the connection closes, ends the connection instead of being read on. The
error classes recorded are the ones the rules know (``shared/notify/rules.py``): ConnectError,
ConnectTimeout, TLSError, ReadTimeout, RemoteProtocolError (the receiver broke HTTP or hung up
without an answer), DeadlineExceeded, and the permanent ForbiddenAddress, InvalidURL,
UnsupportedProtocol and LocalProtocolError (a request we cannot write).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from types import TracebackType
from urllib.parse import quote, urlsplit

import httpx

from shared.notify.ssrf import IPAddress, IPNetwork, check_addresses

RESPONSE_KEEP = 1024
# Idle keep-alive connections are closed after this long: a receiver's next burst usually comes
# sooner, and one that moved to another address is reached there within this time.
KEEPALIVE_SECONDS = 30.0
# A response head longer than this is not an answer to a webhook: the connection is dropped.
MAX_HEAD = 64 * 1024
# A body up to this long is read to its end, so that the connection can be used again.
DRAIN_LIMIT = 64 * 1024

Resolver = Callable[[str, int], Sequence[IPAddress]]


class NameResolutionError(Exception):
    """The notify URL's host name did not resolve (in time)."""


class InvalidURL(Exception):
    """The notify URL cannot be parsed."""


class UnsupportedProtocol(Exception):
    """The notify URL's scheme is not http or https."""


class LocalProtocolError(Exception):
    """The request cannot be written as HTTP/1.1 (a control character in its target, ...)."""


class ConnectError(Exception):
    """No TCP connection to any checked address of the receiver."""


class ConnectTimeout(Exception):
    """The TCP connect (or the TLS handshake) took longer than the connect timeout."""


class TLSError(Exception):
    """The TLS handshake failed: a certificate that does not verify or name the host, ..."""


class ReadTimeout(Exception):
    """The receiver sent nothing for longer than the read timeout."""


class RemoteProtocolError(Exception):
    """The receiver closed without an answer, or answered with something that is not HTTP/1."""


@dataclass(frozen=True)
class AttemptResult:
    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    response: str | None = None
    retry_after: str | None = None
    # The class of the error that ended the attempt (ConnectError, ReadTimeout, ForbiddenAddress,
    # DeadlineExceeded, TLSError, ...), None when a response came back.
    error: str | None = None
    detail: str | None = None
    # The IP address connected to, if a connection was made.
    address: str | None = None


def _literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host.strip("[]"))
    except ValueError:
        return None


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for ``host`` (IPv4 and IPv6), in its order.

    Numeric forms the C library accepts (``2130706433``, ``0x7f000001``, ``127.1``) come back as
    the address they mean, and are judged as that address.
    """
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise NameResolutionError(f"{host}: {exc}") from exc
    found: list[IPAddress] = []
    for info in infos:
        address = ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


class _Lookups:
    """Name lookups in threads (getaddrinfo blocks, and has no time limit of its own), one at a
    time for a host and port.

    A lookup given up on at its caller's time limit still holds its thread until the resolver
    answers. Each lane of a receiver whose DNS answers slowly would start one of its own, every
    attempt: they filled the event loop's small thread pool (6 threads on two cores), and the
    new connections of receivers on other, responsive names then failed their lookups. So
    callers wait on the lookup that runs for their host, each within its own time limit, and a
    new one starts only once it answered. (A resolver slow for every name still fills the pool:
    then every lookup is slow anyway.)
    """

    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve
        self._running: dict[tuple[str, int], asyncio.Future[Sequence[IPAddress]]] = {}

    async def __call__(self, host: str, port: int, timeout: float) -> list[IPAddress]:
        key = (host, port)
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(
                asyncio.to_thread(self._resolve, host, port))
            running.add_done_callback(lambda done: self._answered(key, done))
        try:
            return list(await asyncio.wait_for(asyncio.shield(running), timeout))
        except TimeoutError:
            raise NameResolutionError(f"{host}: no answer within {timeout} s") from None

    def _answered(self, key: tuple[str, int], done: asyncio.Future[Sequence[IPAddress]]) -> None:
        del self._running[key]
        if not done.cancelled():
            done.exception()  # seen, even when every caller had given up on it


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default (certifi's CAs, hostname checked), made once per process: it is slow."""
    return httpx.create_ssl_context(trust_env=False)


@dataclass(frozen=True)
class Target:
    """A notify URL as a connection and a request need it."""

    scheme: str
    host: str  # as in the URL (a name, or an address without brackets)
    port: int
    request: bytes  # the request line and the Host header


# What a path and query keep as they are: the URL's own delimiters and escapes (RFC 3986).
_PATH_SAFE = "/?#[]@!$&'()*+,;=:%-._~"


def parse(url: str) -> Target:
    """The URL's parts; the scheme must be http or https. What intake accepts is written as
    ASCII: an internationalised host name in IDNA, other characters of the path and query
    percent-encoded as UTF-8."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"{url[:100]}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsupportedProtocol(f"{parts.scheme!r} is not http or https")
    if not parts.hostname:
        raise InvalidURL(f"{url[:100]}: no host")
    default = 443 if parts.scheme == "https" else 80
    path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), _PATH_SAFE)
    try:
        name = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise InvalidURL(f"{url[:100]}: the host is no IDNA name") from exc
    host = f"[{name}]" if ":" in name else name
    if port not in (None, default):
        host += f":{port}"
    _check_writable(path, host)
    request = f"POST {path} HTTP/1.1\r\nhost: {host}\r\n".encode("ascii")
    return Target(parts.scheme, parts.hostname, port or default, request)


def _check_writable(*texts: str) -> None:
    """Raise LocalProtocolError unless every text is printable ASCII without spaces."""
    for text in texts:
        if not text.isascii() or not text.isprintable() or " " in text:
            raise LocalProtocolError(f"{text[:100]!r}: not printable ASCII without spaces")


def _header_lines(headers: dict[str, str], body: bytes) -> bytes:
    """The request's header lines after the Host header, and the blank line."""
    for name, value in headers.items():
        _check_writable(name, value.replace(" ", ""))
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (f"{lines}content-length: {len(body)}\r\naccept-encoding: identity\r\n"
            "user-agent: eventdesk\r\n\r\n").encode("ascii")


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes  # its first RESPONSE_KEEP bytes at most
    reusable: bool


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a checked address: one request at a time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = time.monotonic()
        self._buffer = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close: a receiver that stopped sending is done with the connection

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # a read that waited learns it from the end of the stream
        self.closed = self._eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- ours

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def _more(self, timeout: float) -> None:
        """Wait for bytes beyond those in the buffer (ReadTimeout after ``timeout``)."""
        if self._eof:
            raise RemoteProtocolError("the receiver closed the connection mid-answer")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            raise ReadTimeout(f"nothing for {timeout:g} s") from None
        finally:
            self._waiter = None

    async def exchange(self, request: bytes, read_timeout: float) -> Response:
        """Write ``request`` (one send), and read the answer."""
        assert self.transport is not None
        if self._buffer or self._eof:  # an idle connection the receiver spoke on or closed
            raise RemoteProtocolError("the receiver closed the idle connection")
        self.transport.write(request)
        while True:
            status, headers, http10 = await self._head(read_timeout)
            if not 100 <= status < 200 or status == 101:
                break
        if status in (101, 204, 304) or 100 <= status < 200:
            body, ended = b"", True
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body, ended = await self._chunked(read_timeout)
        elif b"content-length" in headers:
            text = headers[b"content-length"]
            if not (text.isdigit() and len(text) < 19):  # int() would take -5, +5 and 1_0
                raise RemoteProtocolError("a content-length that is not a number")
            length = int(text)
            body, ended = await self._sized(length, read_timeout)
        else:  # delimited by the end of the connection
            body, ended = await self._until_close(read_timeout), False
        closing = http10 or b"close" in headers.get(b"connection", b"").lower()
        return Response(status, headers, body[:RESPONSE_KEEP],
                        reusable=ended and not closing and status != 101)

    async def _head(self, read_timeout: float) -> tuple[int, dict[bytes, bytes], bool]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise RemoteProtocolError("a response head longer than 64 KB")
            if self._eof and not self._buffer:
                raise RemoteProtocolError("the receiver closed the connection without an answer")
            await self._more(read_timeout)
        head = bytes(self._buffer[:end])
        del self._buffer[:end + 4]
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise RemoteProtocolError(f"not an HTTP/1 status line: {lines[0][:60]!r}")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise RemoteProtocolError(f"not a header line: {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        return int(code), headers, version == b"HTTP/1.0"

    async def _sized(self, length: int, read_timeout: float) -> tuple[bytes, bool]:
        """The body of ``length`` bytes: all of it when short (the connection can go on),
        else its head (the connection must end)."""
        wanted = length if length <= DRAIN_LIMIT else RESPONSE_KEEP
        while len(self._buffer) < wanted:
            await self._more(read_timeout)
        body = bytes(self._buffer[:wanted])
        del self._buffer[:wanted]
        return body, wanted == length

    async def _until_close(self, read_timeout: float) -> bytes:
        """A body that ends with the connection: its first bytes, or all of it if shorter."""
        while len(self._buffer) < RESPONSE_KEEP and not self._eof:
            await self._more(read_timeout)
        return bytes(self._buffer[:RESPONSE_KEEP])

    async def _line(self, read_timeout: float) -> int:
        """Where the buffer's first line ends (its CRLF), reading until it does."""
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise RemoteProtocolError("a line of a chunked body longer than 64 KB")
            await self._more(read_timeout)
        return end

    async def _chunked(self, read_timeout: float) -> tuple[bytes, bool]:
        """A chunked body, up to its end if it is short; its first bytes."""
        body = bytearray()
        while True:
            end = await self._line(read_timeout)
            text = bytes(self._buffer[:end]).split(b";")[0].strip()
            if not text or len(text) > 16 or text.strip(b"0123456789abcdefABCDEF"):
                raise RemoteProtocolError("a chunk size that is not a number")
            size = int(text, 16)
            del self._buffer[:end + 2]
            if size > DRAIN_LIMIT - len(body):  # too long to read to its end: the head only
                return bytes(body), False
            if size == 0:
                while (end := await self._line(read_timeout)) != 0:  # the trailers, to a blank
                    del self._buffer[:end + 2]
                del self._buffer[:2]
                return bytes(body), True
            while len(self._buffer) < size + 2:
                await self._more(read_timeout)
            body += self._buffer[:size]
            del self._buffer[:size + 2]


async def _connect(
    target: Target, *, allow: Sequence[IPNetwork], lookup: _Lookups, timeout: float,
    verify: ssl.SSLContext | None,
) -> _Connection:
    """A connection to a checked address of the target's host (see the module doc)."""
    addresses = await lookup(target.host, target.port, timeout)
    check_addresses(target.host, addresses, allow)
    context = (verify or default_ssl_context()) if target.scheme == "https" else None
    error: Exception | None = None
    for address in addresses:
        try:
            return await _open(str(address), target, context, timeout)
        except (ConnectError, ConnectTimeout) as exc:
            error = exc
    assert error is not None
    raise error


async def _open(
    address: str, target: Target, context: ssl.SSLContext | None, timeout: float
) -> _Connection:
    connection = _Connection(address)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().create_connection(
                lambda: connection, address, target.port, ssl=context,
                server_hostname=target.host if context else None,
            )
    except ssl.SSLError as exc:
        raise TLSError(str(exc)) from exc
    except TimeoutError:
        raise ConnectTimeout(f"{address}: no connection within {timeout:g} s") from None
    except OSError as exc:
        raise ConnectError(f"{address}: {exc.strerror or exc}") from exc
    return connection


class Sender:
    """POSTs to notify URLs from one event loop, each lane of each receiver on a connection of
    its own, kept alive (a lane has one POST at a time, so one connection is all it needs)."""

    def __init__(
        self, *, connect_timeout: float, read_timeout: float, allow: Sequence[IPNetwork] = (),
        resolve: Resolver = system_resolver, verify: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._deadline = connect_timeout + read_timeout
        self._allow = allow
        self._lookup = _Lookups(resolve)
        self._verify = verify
        self._connections: dict[tuple[str, str, int, int], _Connection] = {}

    async def prune(self) -> None:
        """Close the connections of receivers not posted to for longer than a keep-alive."""
        idle = time.monotonic() - KEEPALIVE_SECONDS
        for key, connection in list(self._connections.items()):
            if connection.used < idle or connection.closed:
                del self._connections[key]
                connection.close()

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            connection.close()

    async def _connection(self, target: Target, lane: int) -> _Connection:
        key = (target.scheme, target.host, target.port, lane)
        found = self._connections.pop(key, None)
        if found is not None and not found.closed and found.used > time.monotonic() - (
                KEEPALIVE_SECONDS):
            return found
        if found is not None:
            found.close()
        return await _connect(target, allow=self._allow, lookup=self._lookup,
                              timeout=self._connect_timeout, verify=self._verify)

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], lane: int = 0
    ) -> AttemptResult:
        """POST ``body`` to ``url`` once, on ``lane``'s connection to it (one POST at a time a
        lane); never raises for anything the receiver or network does."""
        started_at = datetime.now(UTC)
        started = time.monotonic()
        connection: _Connection | None = None
        try:
            target = parse(url)
            request = target.request + _header_lines(headers, body) + body
            async with asyncio.timeout(self._deadline):
                connection = await self._connection(target, lane)
                response = await connection.exchange(request, self._read_timeout)
        except Exception as exc:  # every failure is a result to record, not a crash
            if connection is not None:
                connection.close()
            error = "DeadlineExceeded" if isinstance(exc, TimeoutError) else type(exc).__name__
            return AttemptResult(
                started_at=started_at, duration_ms=_since(started), error=error,
                detail=str(exc)[:255] or type(exc).__name__,
                address=connection.address if connection is not None else None,
            )
        connection.used = time.monotonic()
        if response.reusable:
            self._connections[(target.scheme, target.host, target.port, lane)] = connection
        else:
            connection.close()
        retry_after = response.headers.get(b"retry-after")
        return AttemptResult(
            started_at=started_at, duration_ms=_since(started), status_code=response.status,
            response=response.body.decode("utf-8", "replace"),
            retry_after=retry_after.decode("latin-1") if retry_after is not None else None,
            address=connection.address,
        )


def post(
    url: str, body: bytes, headers: dict[str, str], *, connect_timeout: float,
    read_timeout: float, allow: Sequence[IPNetwork] = (), resolve: Resolver = system_resolver,
    verify: ssl.SSLContext | None = None,
) -> AttemptResult:
    """One POST from synchronous code, on a connection of its own (the guard's checks alone)."""
    async def once() -> AttemptResult:
        async with Sender(connect_timeout=connect_timeout, read_timeout=read_timeout,
                          allow=allow, resolve=resolve, verify=verify) as sender:
            return await sender.post(url, body, headers)

    return asyncio.run(once())


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
