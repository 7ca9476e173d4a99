"""``eventdesk smtp``: the 4me Mail API's SMTP listener (aiosmtpd), the MX-side door behind the
organisation's mail gateway (the rules: shared/mail/service.py).

- MAIL FROM: only from the accepted peer networks (``EVENTDESK_SMTP_ALLOW_NETWORKS``): 550
  otherwise. No AUTH: the gateway in front of it is the one the world talks to. At most
  ``EVENTDESK_SMTP_PEER_MESSAGES_PER_MINUTE`` messages a minute from one address (451 over it),
  and ``EVENTDESK_SMTP_PEER_CONNECTIONS`` connections at once (421 over it).
- RCPT TO: ``<account>@<mail domain>`` or ``<team local part>.<account>@<mail domain>``; an
  unknown address or a directory account: 550, at RCPT, so the sender's MTA bounces it.
- DATA: over ``EVENTDESK_MAIL_MAX_BYTES``: 552 (announced with SIZE in EHLO). The raw message is
  committed to the database for each recipient before the 250, together with the messages of
  the other sessions that arrive meanwhile (:class:`CommitGroups`); the database unreachable:
  451, and the sender tries again. Killed before the 250, nothing is promised; after it, the stored
  row is processed whatever happens to this process (the beat's sweep queues it again).
- STARTTLS when ``EVENTDESK_SMTP_TLS_CERT`` and ``EVENTDESK_SMTP_TLS_KEY`` are set.
- SIGTERM or SIGINT (a rolling restart): no new connection is taken; a session in DATA is
  answered, then told 421 and closed; every other one is told 421 and closed at once; the
  listener exits once none is left, or after ``EVENTDESK_SMTP_DRAIN_SECONDS`` (:func:`drain`).
  A second SIGINT (Ctrl-C again) ends the drain at once; a second SIGTERM changes nothing
  (``eventdesk run`` sends one after the terminal's SIGINT; an orchestrator kills after its
  grace period).
- ``/metrics`` on ``EVENTDESK_SMTP_METRICS_PORT`` (9809): ``eventdesk_mail_received_total``.

One group's commit at a time: a slow commit holds the sessions that reach DATA meanwhile,
never the loop. On PostgreSQL the loop waits for the commit itself (psycopg's asynchronous
connection); on SQLite, and for a recipient the cache does not know, the database is asked
in the loop's thread pool, as is the publish of the task that queues a group's messages (when
it goes at once: in a stream, the wake-up's own thread sends one an interval).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import re
import signal
import ssl
import weakref
from collections import Counter
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, syntax

from shared import collector, metrics
from shared.logs import get_logger
from shared.mail.queries import Destination
from shared.mail.rules import BadRecipient
from shared.mail.service import Accepting, EmptyMessage, MailIntake, TooLarge
from shared.messaging.publish import LocalLimiter, make_publisher
from shared.settings import Settings, get_settings

log = get_logger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PEERS_REMEMBERED = 1024
# The path of MAIL FROM or RCPT TO as almost every MTA writes it: <dot-atom@host.name>, then the
# parameters after spaces or tabs (:meth:`PeerLimitedSMTP._getaddr`).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<(?P<local>{_ATEXT}(?:\.{_ATEXT})*)@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    r"[ \t]*(?P<rest>[^\s(].*)?", re.DOTALL)


def parse_networks(text: str) -> list[Network]:
    return [ipaddress.ip_network(item.strip(), strict=False)
            for item in text.split(",") if item.strip()]


def peer_address(peer: object) -> str:
    """The address of aiosmtpd's ``session.peer`` (a (host, port, ...) tuple for TCP)."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class MailHandler:
    """aiosmtpd's handler: each hook answers the SMTP command it is named after."""

    def __init__(self, intake: MailIntake, networks: list[Network],
                 per_minute: float = 600.0) -> None:
        self._intake = intake
        self._groups = CommitGroups(intake)
        self._networks = networks
        # This listener's own buckets: a peer's rate is per listener process, like its
        # connections (a deployment of K listeners lets a peer send K times as much).
        self._rate = LocalLimiter(per_minute / 60, max(1, int(per_minute)))
        self._destinations: weakref.WeakKeyDictionary[Envelope, list[Destination]] = \
            weakref.WeakKeyDictionary()
        # Remembered for the last PEERS_REMEMBERED peers: their MTAs send message after message.
        self._allowed = lru_cache(maxsize=PEERS_REMEMBERED)(self._in_networks)

    def _in_networks(self, text: str) -> bool:
        """Whether the address ``text`` is in an accepted network."""
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str,  # noqa: ARG002
        mail_options: list[str],
    ) -> str:
        peer = peer_address(session.peer)
        if not self._allowed(peer):
            metrics.mail_received.labels(result="refused_peer").inc()
            return "550 5.7.1 mail is not accepted from your network"
        if self._rate.take({peer: 1}) is not None:
            metrics.mail_received.labels(result="refused_peer").inc()
            return "451 4.7.1 too many messages from your address, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str,  # noqa: ARG002
        rcpt_options: list[str],
    ) -> str:
        try:
            destination = self._intake.known_destination(address)
            if destination is None:
                destination = await asyncio.get_running_loop().run_in_executor(
                    None, self._intake.destination, address)
        except BadRecipient as exc:
            metrics.mail_received.labels(result="refused_recipient").inc()
            return f"550 5.1.1 {exc}"
        except Exception as exc:  # the database's: the sender's MTA keeps the mail and retries
            log.warning("recipient not checked: database unreachable", error=str(exc)[:200])
            return "451 4.3.0 temporary failure, try again later"
        self._destinations.setdefault(envelope, []).append(destination)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope,  # noqa: ARG002
    ) -> str:
        raw = envelope.original_content or b""
        peer, now = f"smtp {peer_address(session.peer)}", datetime.now(UTC)
        try:
            entries = self._intake.prepare(raw, self._destinations.pop(envelope, []), peer, now)
        except TooLarge as exc:  # aiosmtpd refuses most before, at the same limit
            metrics.mail_received.labels(result="too_large").inc()
            return f"552 5.3.4 {exc}"
        except EmptyMessage as exc:
            metrics.mail_received.labels(result="invalid").inc()
            return f"554 5.6.0 {exc}"
        await self._groups.commit(entries)
        failed = next((entry.error for entry in entries if entry.error is not None), None)
        if failed is not None:  # the database's, or this message's: the sender retries
            log.warning("mail not stored", error=repr(failed)[:200])
            metrics.mail_received.labels(result="unavailable").inc()
            return "451 4.3.0 temporary failure, try again later"
        metrics.mail_received.labels(result="accepted").inc()
        return f"250 OK queued as {' '.join(entry.transid for entry in entries)}"


class CommitGroups:
    """The messages of concurrent sessions committed together (``MailIntake.commit_async``)
    from the event loop: while one group's transaction runs, the messages that arrive gather,
    and go as the next group when it ends. One commit a group, not a message, and a lone
    message waits for nothing."""

    def __init__(self, intake: MailIntake) -> None:
        self._intake = intake
        self._gathering: list[tuple[list[Accepting], asyncio.Future[None]]] = []
        self._committing: asyncio.Task[None] | None = None

    async def commit(self, entries: list[Accepting]) -> None:
        """Returns once each of ``entries`` (a message's, one a recipient: always in the same
        group, though MailIntake.commit_async may cut a group of over MAX_GROUP_BYTES into
        transactions) is committed, or has the error that kept it out."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gathering.append((entries, done))
        if self._committing is None:
            self._committing = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        try:
            while self._gathering:
                group, self._gathering = self._gathering, []
                entries = [entry for message, _ in group for entry in message]
                try:
                    await self._intake.commit_async(entries)
                except BaseException as exc:  # commit gives each its outcome: a bug, or the end
                    for entry in entries:
                        entry.error = exc  # nothing promised: the senders try again
                    if not isinstance(exc, Exception):  # the loop is stopping
                        raise
                finally:
                    for _, done in group:
                        if not done.done():  # its session may be gone (the connection dropped)
                            done.set_result(None)
        finally:
            self._committing = None


SHUTTING_DOWN = b"421 4.3.2 the listener is shutting down, try again later\r\n"


class Sessions(set["PeerLimitedSMTP"]):
    """The listener's open sessions (to end them at shutdown: :func:`drain`), and whether the
    shutdown has begun (a connection made since is told 421 at once)."""

    draining = False


class PeerLimitedSMTP(SMTP):
    """aiosmtpd's SMTP session, refused (421) beyond ``limit`` connections from one address,
    reading the address of MAIL and RCPT for less (:meth:`_getaddr`), with one idle timer
    (:meth:`_reset_timeout`), and in ``sessions`` while its connection is open (to be ended
    by :meth:`shut`)."""

    def __init__(self, handler: MailHandler, *, connections: Counter[str], limit: int,
                 sessions: Sessions | None = None, **options: Any) -> None:
        super().__init__(handler, **options)
        self._connections = connections
        self._limit = limit
        self._sessions = Sessions() if sessions is None else sessions
        self._peer: str | None = None
        self._refused = False
        self._in_data = False
        self._shut = False
        self._deadline = 0.0
        # When the timer is set to go off; None once it went off (or before it is set).
        self._timer_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the STARTTLS upgrade of a connection counted already
            peer = str((transport.get_extra_info("peername") or ("",))[0])
            refusal = None
            if self._sessions.draining:  # made as the shutdown began
                refusal = SHUTTING_DOWN
            elif self._connections[peer] >= self._limit:
                refusal = b"421 4.7.0 too many connections from your address\r\n"
            if refusal is not None:
                self._refused = True
                transport.write(refusal)  # type: ignore[attr-defined]
                transport.close()
                return
            self._connections[peer] += 1
            self._peer = peer
            self._sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self._sessions.discard(self)
        if self._peer is not None:
            self._connections[self._peer] -= 1
            if not self._connections[self._peer]:
                del self._connections[self._peer]
            self._peer = None
        super().connection_lost(error)

    def eof_received(self) -> bool:
        """aiosmtpd's (the session's handler stops: nothing more is read or answered), then the
        connection closes (False), freeing the peer's place at once. aiosmtpd's answer keeps a
        half-closed connection open for its handler to close; a handler stopped before it
        began (a client that connects and closes at once, as a TCP health check does: the
        usual order on uvloop) never did, and the place stayed taken until the idle timeout
        or the garbage collector ended the connection."""
        if not self._refused:
            super().eof_received()
        return False

    def shut(self) -> None:
        """End the session for a shutdown, with 421: at once, or, in DATA, once its message is
        answered (its 250 says it is stored: a sender cut off before it sends the message again,
        and one without a Message-ID would make a second request)."""
        self._shut = True
        if not self._in_data:
            self._close_shut()

    def _close_shut(self) -> None:
        if self.transport is not None:
            self.transport.write(SHUTTING_DOWN)  # type: ignore[attr-defined]
            self.transport.close()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's command name
        """aiosmtpd's, then the end of a session :meth:`shut` meanwhile (its answer is written
        by then: aiosmtpd's ``push`` writes before it waits)."""
        self._in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False
            if self._shut:
                self._close_shut()

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's command name
        """aiosmtpd's, refused once TLS is up (RFC 3207 4.2), and ending the session when the
        handshake it started did not complete.

        A client that goes silent mid-handshake is closed by the idle timer; Python's TLS layer,
        closed mid-handshake, resolves aiosmtpd's handshake waiter as if it had succeeded and
        never reports the connection lost. The session then waited forever for a command and
        kept its peer's place: after ``EVENTDESK_SMTP_PEER_CONNECTIONS`` such stalls (a gateway
        restarted, a NAT entry dropped), every connection from that peer was refused (421)
        until a restart. aiosmtpd ends a failed handshake's session on TLSSetupException. A
        second STARTTLS, inside the first's TLS, would stall the same way unseen (the session
        has its TLS details from the first), so it is refused."""
        if self._tls_protocol is not None:
            await self.push("554 5.5.1 TLS already active")
            return
        await super().smtp_STARTTLS(arg)
        assert self.session is not None
        if self._original_transport is not None and self.session.ssl is None:
            raise TLSSetupException("the TLS handshake did not complete")

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's (the session closes after ``duration``, by default its timeout, without a
        command), with one timer a session instead of a new one at every command: the
        deadline moves, and a timer that comes before it sets itself again for the rest
        (:meth:`_on_timer`). A deadline sooner than the timer's (a shorter ``duration``) sets
        a new one. tests/test_smtp_contract.py holds aiosmtpd to the names this uses.

        The timer's time is kept here, not asked of its handle: uvloop rounds a delay to whole
        milliseconds and answers a ``call_at`` under half a millisecond away with a plain
        Handle, which has no ``when()`` (uvloop #482); its timers can go off that close before
        the deadline."""
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        if self._timer_at is None or self._timer_at > self._deadline:
            self._arm(self._deadline)

    def _arm(self, when: float) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._timeout_handle = self.loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        if self.loop.time() < self._deadline:
            self._arm(self._deadline)
            return
        self._timer_at = None
        self._timeout_cb()  # type: ignore[no-untyped-call]

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own (the address and the parameters that follow it; (None, None) for a
        malformed one), with the common form read by a pattern. aiosmtpd builds a typing class
        on every call, and parses with the email package's header parser: most of what a
        message costs the listener in the protocol (bench/README.md). Anything the pattern
        does not take, aiosmtpd reads; tests/test_smtp_contract.py holds the two to the same
        answers."""
        found = _PLAIN_PATH.fullmatch(arg)
        if found is None:
            return super()._getaddr(arg)
        if self.local_part_limit and len(found["local"]) > self.local_part_limit:
            return None, None
        return f"{found['local']}@{found['domain']}", found["rest"] or ""


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.smtp_tls_cert is None or settings.smtp_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.smtp_tls_cert, settings.smtp_tls_key)
    return context


def _export_metrics(settings: Settings) -> None:
    if not settings.smtp_metrics_port:
        return
    metrics.initialize("smtp")
    host, port = settings.worker_metrics_host, settings.smtp_metrics_port
    try:
        metrics.start_exporter(host, port, metrics.registry(settings.prometheus_multiproc_dir))
    except OSError as exc:  # metrics are not worth refusing mail for
        log.error("metrics exporter did not start", host=host, port=port, error=str(exc))


def new_loop() -> asyncio.AbstractEventLoop:
    """The listener's event loop: uvloop's, where it is installed (everywhere but Windows).

    aiosmtpd's reading and answering of the SMTP dialogue is most of what a message costs the
    listener, and uvloop's transports do that part for less (bench/README.md, session 12).
    aiosmtpd supports it (STARTTLS swaps protocols with the public ``set_protocol``); the
    listener's tests run on this loop, the ones of its TLS session ends among them."""
    try:
        import uvloop
    except ImportError:  # Windows: no uvloop
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def drain(server: asyncio.AbstractServer, sessions: Sessions, within: float,
                hurry: asyncio.Event) -> None:
    """Take no more connections, :meth:`~PeerLimitedSMTP.shut` every session, and wait for
    them to end: ``within`` seconds at most, or until ``hurry`` is set. A session still open
    then is dropped: a message it was storing may be stored without its 250 (the sender sends
    it again: the same mail by its Message-ID)."""
    sessions.draining = True
    server.close()
    for session in list(sessions):
        session.shut()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while sessions and not hurry.is_set() and loop.time() < deadline:
        await asyncio.sleep(0.05)


def serve(host: str, port: int) -> None:
    settings = get_settings()
    _export_metrics(settings)
    intake = MailIntake(
        make_publisher(settings.resolved_broker_url(), settings.resolved_redis_url(),
                       settings.rate_limit_per_second, settings.rate_limit_burst),
        settings.resolved_secret_key(), settings.mail_max_bytes, settings.cache_ttl_seconds)
    handler = MailHandler(intake, parse_networks(settings.smtp_allow_networks),
                          settings.smtp_peer_messages_per_minute)
    context = tls_context(settings)
    connections: Counter[str] = Counter()
    sessions = Sessions()
    loop = new_loop()
    server = loop.run_until_complete(loop.create_server(
        lambda: PeerLimitedSMTP(
            handler, connections=connections, limit=settings.smtp_peer_connections,
            sessions=sessions, data_size_limit=settings.mail_max_bytes, tls_context=context,
            ident="eventdesk", timeout=60),
        host, port))
    stopping = False
    hurry = asyncio.Event()

    def on_signal(signum: int) -> None:
        nonlocal stopping
        if not stopping:  # once: a second stop() would stop the drain's run too (uvloop)
            stopping = True
            loop.stop()
        elif signum == signal.SIGINT:
            hurry.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    collector.settle()
    log.info("smtp listening", host=host, port=port, starttls=context is not None)
    try:
        loop.run_forever()
        log.info("smtp stopping", sessions=len(sessions))
        loop.run_until_complete(drain(server, sessions, settings.smtp_drain_seconds, hurry))
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="eventdesk smtp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
