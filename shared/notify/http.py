"""POSTs to notify URLs, through the SSRF guard, within a hard time limit. No database here.

:class:`Sender` is one process's client: asyncio, with keep-alive connections per receiver, so
hundreds of POSTs are in flight at once without a thread each. The guard sits where a connection
is made: an httpcore network backend (:class:`GuardedBackend`) resolves the host once, checks
every address it resolves to (``shared/notify/ssrf.py``), and connects to one of those checked
addresses. The URL is untouched, so the request keeps its ``Host`` header, and TLS still sends the
host name as SNI and verifies the certificate against it (httpcore wraps the connected socket
with ``server_hostname`` = the URL's host). Checking a name first and letting the HTTP client
resolve it again to connect would let a DNS answer change in between (rebinding); here there is
no second resolution. A kept-alive connection stays on the address that was checked when it was
made. No proxy is ever used (httpcore connections read no environment): through a proxy, the
address connected to would be the proxy's.

Timeouts: ``connect`` for name resolution and each TCP connect, ``read`` for each read, and a
deadline for the whole attempt (``connect + read``): a receiver that drips one byte every few
seconds cannot hold a lane, or outlive the delivery's lease, however slowly it answers. Past the
deadline the attempt is cancelled, which closes its connection.

Redirects are not followed (httpcore has no notion of them), and only the first 1 KB of a
response is read and kept.
"""

from __future__ import annotations

import asyncio
import functools
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from shared.notify.ssrf import ForbiddenAddress, IPAddress, IPNetwork, check_addresses

RESPONSE_KEEP = 1024
# Idle keep-alive connections are closed after this long: a receiver's next burst usually comes
# sooner, and one that moved to another address is reached there within this time.
KEEPALIVE_SECONDS = 30.0

Resolver = Callable[[str, int], Sequence[IPAddress]]
# httpcore's socket option type (httpcore._backends.base.SOCKET_OPTION).
SOCKET_OPTION = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class NameResolutionError(Exception):
    """The notify URL's host name did not resolve (in time)."""


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


async def _resolve_within(
    resolve: Resolver, host: str, port: int, timeout: float
) -> list[IPAddress]:
    """``resolve`` in a thread (getaddrinfo blocks), with a time limit (it has none of its own)."""
    try:
        return list(await asyncio.wait_for(asyncio.to_thread(resolve, host, port), timeout))
    except TimeoutError:
        raise NameResolutionError(f"{host}: no answer within {timeout} s") from None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolve once, check every address, connect only to a checked one (see the module doc)."""

    def __init__(
        self, allow: Sequence[IPNetwork], resolve: Resolver, resolve_timeout: float
    ) -> None:
        self._allow = allow
        self._resolve = resolve
        self._resolve_timeout = resolve_timeout
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve_within(
            self._resolve, host, port, min(timeout or self._resolve_timeout, self._resolve_timeout)
        )
        check_addresses(host, addresses, self._allow)
        error: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return CheckedStream(stream, (str(address), port))
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        del path, timeout, socket_options
        raise ForbiddenAddress("unix sockets are not notify URLs")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedStream(httpcore.AsyncNetworkStream):
    """A connection that knows the checked address it was made to, whatever becomes of its socket
    (a receiver that closes at once leaves nothing for ``getpeername`` to answer)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, address: tuple[str, int]) -> None:
        self._inner = inner
        self.address = address
        self._socket = inner.get_extra_info("socket")
        self._unsent = b""
        self._write_timeout: float | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush()
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # Held until the response is read: httpcore writes a request's head and body apart, and
        # on a fast receiver each send costs more than the rest of the POST (one send, not two).
        self._unsent += buffer
        self._write_timeout = timeout

    async def _flush(self) -> None:
        if self._unsent:
            unsent, self._unsent = self._unsent, b""
            await self._inner.write(unsent, self._write_timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        await self._flush()
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return CheckedStream(tls, self.address)

    def get_extra_info(self, info: str) -> Any:
        if info == "server_addr":
            return self.address
        if info == "is_readable" and self._socket is not None:
            # Asked of every idle connection of the pool on every request: anyio's answer builds
            # a dict of the socket's attributes each time, most of a fast POST's CPU.
            poll = select.poll()
            poll.register(self._socket, select.POLLIN)
            return bool(poll.poll(0))
        return self._inner.get_extra_info(info)


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default (certifi's CAs, hostname checked), made once per process: it is slow."""
    return httpx.create_ssl_context(trust_env=False)


def _error_class(exc: BaseException) -> str:
    if isinstance(exc, httpcore.ConnectError) and _caused_by(exc, ssl.SSLError):
        return "TLSError"
    return type(exc).__name__


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class InvalidURL(Exception):
    """The notify URL cannot be parsed."""


class Sender:
    """POSTs to notify URLs from one event loop, each lane of each receiver on a connection of
    its own, kept alive.

    httpcore's connections, without a pool: its pool looks at each of its connections for each
    request in flight, every time one starts or ends (lanes x lanes looks a POST: a millisecond
    at 16 lanes, more than the POST), and httpx's client around it costs as much again. A lane
    has one POST at a time, so one connection is all it needs.
    """

    def __init__(
        self, *, connect_timeout: float, read_timeout: float, allow: Sequence[IPNetwork] = (),
        resolve: Resolver = system_resolver, verify: ssl.SSLContext | None = None,
    ) -> None:
        self._deadline = connect_timeout + read_timeout
        self._backend = GuardedBackend(allow, resolve, connect_timeout)
        self._verify = verify
        self._timeouts = {"connect": connect_timeout, "read": read_timeout,
                          "write": read_timeout, "pool": connect_timeout}
        self._connections: dict[tuple[bytes, int], tuple[httpcore.AsyncHTTPConnection, float]] = {}

    def _connection(self, url: httpcore.URL, lane: int) -> httpcore.AsyncHTTPConnection:
        origin = url.origin
        key = (bytes(str(origin), "ascii"), lane)
        found = self._connections.get(key)
        if found is None or found[0].is_closed() or found[0].has_expired():
            connection = httpcore.AsyncHTTPConnection(
                origin, ssl_context=self._verify or default_ssl_context(),
                keepalive_expiry=KEEPALIVE_SECONDS, network_backend=self._backend,
            )
        else:
            connection = found[0]
        self._connections[key] = (connection, time.monotonic())
        return connection

    async def prune(self) -> None:
        """Close the connections of receivers not posted to for longer than a keep-alive."""
        idle = time.monotonic() - KEEPALIVE_SECONDS
        for key, (connection, used) in list(self._connections.items()):
            if used < idle:
                del self._connections[key]
                await connection.aclose()

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        connections, self._connections = self._connections, {}
        for connection, _ in connections.values():
            await connection.aclose()

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], lane: int = 0
    ) -> AttemptResult:
        """POST ``body`` to ``url`` once, on ``lane``'s connection to it (one POST at a time a
        lane); never raises for anything the receiver or network does."""
        started_at = datetime.now(UTC)
        started = time.monotonic()
        status_code: int | None = None
        retry_after: str | None = None
        address: str | None = None
        kept = b""
        try:
            target = _parse(url)
            sent = [(k.encode(), v.encode()) for k, v in headers.items()]
            sent += [(b"host", target.host + _port_suffix(target)),
                     (b"content-length", str(len(body)).encode()),
                     (b"accept-encoding", b"identity"), (b"user-agent", b"eventdesk")]
            async with asyncio.timeout(self._deadline), self._connection(target, lane).stream(
                b"POST", target, headers=sent, content=body,
                extensions={"timeout": self._timeouts},
            ) as response:
                status_code = response.status
                retry_after = _header(response.headers, b"retry-after")
                address = _peer(response)
                kept = await _head(response)
        except Exception as exc:  # every failure is a result to record, not a crash
            if status_code is None:  # once the status is in, the receiver has answered
                error = "DeadlineExceeded" if isinstance(exc, TimeoutError) else _error_class(exc)
                return AttemptResult(
                    started_at=started_at, duration_ms=_since(started), error=error,
                    detail=str(exc)[:255] or type(exc).__name__, address=address,
                )
        return AttemptResult(
            started_at=started_at, duration_ms=_since(started), status_code=status_code,
            response=kept[:RESPONSE_KEEP].decode("utf-8", "replace"), retry_after=retry_after,
            address=address,
        )


def _parse(url: str) -> httpcore.URL:
    """The URL as httpcore takes it; the scheme must be http or https."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"{url[:100]}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise httpcore.UnsupportedProtocol(f"{parts.scheme!r} is not http or https")
    if not parts.hostname:
        raise InvalidURL(f"{url[:100]}: no host")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return httpcore.URL(scheme=parts.scheme, host=parts.hostname, port=port, target=target)


def _port_suffix(url: httpcore.URL) -> bytes:
    default = 443 if url.scheme == b"https" else 80
    return b"" if url.port in (None, default) else b":%d" % url.port


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)


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


def _peer(response: httpcore.Response) -> str | None:
    """The address the response came from: the connection's, which the guard checked."""
    stream = response.extensions.get("network_stream")
    return stream.address[0] if isinstance(stream, CheckedStream) else None


async def _head(response: httpcore.Response) -> bytes:
    """The first :data:`RESPONSE_KEEP` bytes of the body, or what came before it broke off."""
    kept = b""
    try:
        async for chunk in response.aiter_stream():
            kept += chunk
            if len(kept) >= RESPONSE_KEEP:
                break
    except httpcore.NetworkError:
        pass
    return kept


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
