"""One POST to a notify URL, through the SSRF guard, within a hard time limit. No database here.

The guard sits where the connection is made: an httpcore network backend (:class:`GuardedBackend`)
resolves the host once, checks every address it resolves to (``shared/notify/ssrf.py``), and
connects to one of those checked addresses. The URL is untouched, so the request keeps its
``Host`` header, and TLS still sends the host name as SNI and verifies the certificate against it
(httpcore wraps the connected socket with ``server_hostname`` = the URL's host). Checking a name
first and letting the HTTP client resolve it again to connect would let a DNS answer change in
between (rebinding); here there is no second resolution. Proxies from the environment are ignored
(``trust_env=False``): through a proxy, the address connected to would be the proxy's.

Timeouts: ``connect`` for name resolution and each TCP connect, ``read`` for each read, and a
watchdog for the whole attempt (``connect + read``): a receiver that drips one byte every few
seconds cannot hold a worker, or outlive the delivery's lease, however slowly it answers. When the
watchdog fires it shuts the socket down, which ends any blocked read at once.

Redirects are not followed, and only the first 1 KB of a response is read and kept.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address

import httpcore
import httpx

from shared.notify.ssrf import ForbiddenAddress, IPAddress, IPNetwork, check_addresses

RESPONSE_KEEP = 1024

Resolver = Callable[[str, int], Sequence[IPAddress]]
# httpcore's socket option type (httpcore._backends.base.SOCKET_OPTION).
SOCKET_OPTION = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class NameResolutionError(Exception):
    """The notify URL's host name did not resolve (in time)."""


class DeadlineExceeded(Exception):
    """The attempt took longer than connect + read timeout, all included."""


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


def _resolve_within(resolve: Resolver, host: str, port: int, timeout: float) -> list[IPAddress]:
    """``resolve`` with a time limit (getaddrinfo has none of its own)."""
    outcome: list[Sequence[IPAddress] | BaseException] = []

    def run() -> None:
        try:
            outcome.append(resolve(host, port))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name="notify-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise NameResolutionError(f"{host}: no answer within {timeout} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return list(result)


class _Watchdog:
    """Shuts down the attempt's sockets when its time is up."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def watch(self, stream: httpcore.NetworkStream) -> None:
        sock = stream.get_extra_info("socket")
        if not isinstance(sock, socket.socket):
            return
        # A duplicate descriptor of the same socket: shutting it down ends reads on the original,
        # and on the TLS socket that will wrap it.
        duplicate = sock.dup()
        with self._lock:
            self._sockets.append(duplicate)
            if self.fired:
                _shutdown(duplicate)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class GuardedBackend(httpcore.NetworkBackend):
    """Resolve once, check every address, connect only to a checked one (see the module doc)."""

    def __init__(
        self, allow: Sequence[IPNetwork], resolve: Resolver, watchdog: _Watchdog,
        resolve_timeout: float,
    ) -> None:
        self._allow = allow
        self._resolve = resolve
        self._watchdog = watchdog
        self._resolve_timeout = resolve_timeout
        self._inner = httpcore.SyncBackend()
        self.address: str | None = None

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve_within(
            self._resolve, host, port, min(timeout or self._resolve_timeout, self._resolve_timeout)
        )
        check_addresses(host, addresses, self._allow)
        error: Exception | None = None
        for address in addresses:
            if self._watchdog.fired:
                raise DeadlineExceeded(f"no connection to {host} in time")
            try:
                stream = self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            self.address = str(address)
            self._watchdog.watch(stream)
            return stream
        assert error is not None
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        del path, timeout, socket_options
        raise ForbiddenAddress("unix sockets are not notify URLs")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool whose connections go through :class:`GuardedBackend`.

    httpx takes no network backend in its constructor, so the pool it built is replaced by one
    made the same way with ours (``_pool`` is the attribute httpx sends requests through).
    """

    def __init__(self, backend: GuardedBackend, verify: ssl.SSLContext | None = None) -> None:
        context = verify or default_ssl_context()
        super().__init__(verify=context, trust_env=False, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=context, max_connections=1, max_keepalive_connections=0, retries=0,
            network_backend=backend,
        )


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default (certifi's CAs, hostname checked), made once per process: it is slow."""
    return httpx.create_ssl_context(trust_env=False)


def _error_class(exc: BaseException, watchdog: _Watchdog) -> str:
    if watchdog.fired and not isinstance(exc, ForbiddenAddress):
        return "DeadlineExceeded"
    if isinstance(exc, httpx.ConnectError) and _caused_by(exc, ssl.SSLError):
        return "TLSError"
    return type(exc).__name__


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def post(
    url: str, body: bytes, headers: dict[str, str], *, connect_timeout: float,
    read_timeout: float, allow: Sequence[IPNetwork] = (), resolve: Resolver = system_resolver,
    verify: ssl.SSLContext | None = None,
) -> AttemptResult:
    """POST ``body`` to ``url`` once; never raises for anything the receiver or network does."""
    started_at = datetime.now(UTC)
    started = time.monotonic()
    timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout,
                            pool=connect_timeout)
    status_code: int | None = None
    retry_after: str | None = None
    kept = b""
    with _Watchdog(connect_timeout + read_timeout) as watchdog:
        backend = GuardedBackend(allow, resolve, watchdog, connect_timeout)
        try:
            with httpx.Client(
                transport=GuardedTransport(backend, verify), timeout=timeout,
                follow_redirects=False, trust_env=False,
            ) as client, client.stream(
                "POST", url, content=body,
                headers={**headers, "accept-encoding": "identity", "user-agent": "eventdesk"},
            ) as response:
                status_code = response.status_code
                retry_after = response.headers.get("retry-after")
                kept = _head(response)
        except Exception as exc:  # every failure is a result to record, not a crash
            if status_code is None:  # once the status is in, the receiver has answered
                return AttemptResult(
                    started_at=started_at, duration_ms=_since(started),
                    error=_error_class(exc, watchdog),
                    detail=str(exc)[:255] or type(exc).__name__, address=backend.address,
                )
    return AttemptResult(
        started_at=started_at, duration_ms=_since(started), status_code=status_code,
        response=kept[:RESPONSE_KEEP].decode("utf-8", "replace"), retry_after=retry_after,
        address=backend.address,
    )


def _head(response: httpx.Response) -> bytes:
    """The first :data:`RESPONSE_KEEP` bytes of the body, or what came before it broke off."""
    kept = b""
    try:
        for chunk in response.iter_raw():
            kept += chunk
            if len(kept) >= RESPONSE_KEEP:
                break
    except httpx.HTTPError:
        pass
    return kept


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
