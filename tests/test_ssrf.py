"""The SSRF guard: the address rule (pure), and the guarded POST against a canary on localhost.

The canary is an HTTP server listening on every local address (IPv6 ``::`` with IPv4 mapped in),
so any address form that reaches this host reaches it; it counts the requests it gets. No form
of a forbidden address may get a request through, and the allow-list is what opens the door.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from shared.notify.http import post, system_resolver
from shared.notify.ssrf import IPAddress, check_address, parse_networks
from tests.conftest import self_signed

pytestmark = pytest.mark.xdist_group("ssrf")

LOCALHOST = parse_networks("127.0.0.0/8")


# ------------------------------------------------------------------------------------------
# The rule


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.1", "private"),
    ("169.254.1.1", "link-local"),
    ("169.254.169.254", "cloud metadata address"),
    ("100.64.0.1", "shared address space (CGNAT)"),
    ("100.127.255.254", "shared address space (CGNAT)"),
    ("100.100.100.200", "cloud metadata address"),
    ("168.63.129.16", "cloud metadata address"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "private"),
    ("255.255.255.255", "private"),
    ("192.0.2.10", "private"),
    ("198.18.0.1", "private"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fd00::1", "private"),
    ("fc00::1", "private"),
    ("fd00:ec2::254", "cloud metadata address"),
    ("ff02::1", "multicast"),
    ("fec0::1", "site-local"),
    ("::ffff:127.0.0.1", "carries 127.0.0.1: loopback"),
    ("::ffff:10.0.0.1", "carries 10.0.0.1: private"),
    ("::ffff:169.254.169.254", "cloud metadata address"),
    ("64:ff9b::7f00:1", "carries 127.0.0.1: loopback"),
    ("64:ff9b::a00:1", "carries 10.0.0.1: private"),
    ("2002:7f00:1::", "carries 127.0.0.1: loopback"),
    ("2002:c0a8:101::", "carries 192.168.1.1: private"),
    ("::7f00:1", "reserved"),
    ("2001::1", "private"),  # Teredo
    ("2001:db8::1", "private"),  # documentation
    ("93.184.216.34", None),
    ("8.8.8.8", None),
    ("::ffff:8.8.8.8", None),
    ("64:ff9b::808:808", None),
    ("2606:4700:4700::1111", None),
])
def test_address_rule(address: str, reason: str | None) -> None:
    assert check_address(ip_address(address)) == reason


def test_allow_list_opens_a_network_but_never_metadata() -> None:
    allow = parse_networks("127.0.0.0/8, 10.0.0.0/8,169.254.0.0/16, fd00::/8")
    assert check_address(ip_address("127.0.0.1"), allow) is None
    assert check_address(ip_address("::ffff:127.0.0.1"), allow) is None
    assert check_address(ip_address("10.9.8.7"), allow) is None
    assert check_address(ip_address("fd12::1"), allow) is None
    assert check_address(ip_address("192.168.1.1"), allow) == "private"
    assert check_address(ip_address("::1"), allow) == "loopback"  # IPv6 loopback not listed
    assert check_address(ip_address("169.254.169.254"), allow) == "cloud metadata address"
    assert check_address(ip_address("fd00:ec2::254"), allow) == "cloud metadata address"


def test_allow_list_parsing() -> None:
    assert parse_networks("") == ()
    assert [str(n) for n in parse_networks(" 10.1.2.3/8 ,::1/128")] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="does not appear"):
        parse_networks("localhost")


# ------------------------------------------------------------------------------------------
# The guarded POST against a canary


class Canary:
    """An HTTP server on every local address, IPv4 and IPv6, counting what reaches it."""

    def __init__(self) -> None:
        self.hits: list[dict[str, str]] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hits.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class DualStack(ThreadingHTTPServer):
            address_family = socket.AF_INET6
            daemon_threads = True

            def server_bind(self) -> None:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                super().server_bind()

        self.server = DualStack(("::", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    server = Canary()
    yield server
    server.close()


# Names a test resolver answers (a DNS answer the attacker controls).
NAMES: dict[str, list[str]] = {
    "internal.test": ["10.20.30.40"],
    "loopback.test": ["127.0.0.1"],
    "rebind.test": ["93.184.216.34", "127.0.0.1"],  # one public, one local: refused
    "mapped.test": ["::ffff:127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "v6loop.test": ["::1"],
    "canary.test": ["127.0.0.1"],
}


def resolver(host: str, port: int) -> list[IPAddress]:
    if host in NAMES:
        return [ip_address(address) for address in NAMES[host]]
    return system_resolver(host, port)


def own_addresses() -> list[str]:
    """This host's own addresses (a container's eth0, ...): reachable, and not for notify URLs."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


FORMS = [
    "127.0.0.1", "127.0.0.2", "127.255.255.254", "localhost", "LOCALHOST",
    "0.0.0.0", "0", "2130706433", "0x7f000001", "0x7f.1", "0177.0.0.1", "127.1", "017700000001",
    "[::1]", "[::]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]",
    "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[::127.0.0.1]",
    "10.0.0.1", "172.16.0.1", "172.31.255.254", "192.168.1.1", "169.254.169.254",
    "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "100.64.0.1", "100.100.100.200",
    "168.63.129.16", "[fd00::1]", "[fd00:ec2::254]", "[fe80::1]", "224.0.0.1",
    "255.255.255.255", "198.18.0.1", "240.0.0.1", "user@127.0.0.1", "example.com@127.0.0.1",
    "internal.test", "loopback.test", "rebind.test", "mapped.test", "metadata.test",
    "v6loop.test",
]


@pytest.mark.parametrize("host", FORMS + [
    f"[{a}]" if ":" in a else a for a in own_addresses()
])
def test_no_form_of_a_local_address_reaches_the_canary(canary: Canary, host: str) -> None:
    before = len(canary.hits)
    result = post(
        f"http://{host}:{canary.port}/hook", b"{}", {"content-type": "application/json"},
        connect_timeout=1, read_timeout=1, allow=(), resolve=resolver,
    )
    assert len(canary.hits) == before, f"{host} reached the canary"
    assert result.status_code is None
    assert result.address is None  # refused before any connection was made
    # httpx itself rejects a few malformed forms (0177.0.0.1) before our guard sees them.
    assert result.error in ("ForbiddenAddress", "InvalidURL"), result
    assert len(FORMS) >= 25


def test_the_allow_list_lets_the_canary_be_reached(canary: Canary) -> None:
    before = len(canary.hits)
    result = post(
        f"http://127.0.0.1:{canary.port}/hook", b"{}", {}, connect_timeout=1, read_timeout=1,
        allow=LOCALHOST,
    )
    assert (result.status_code, result.address) == (204, "127.0.0.1")
    assert len(canary.hits) == before + 1


def test_the_request_keeps_its_host_name_while_connecting_to_the_checked_address(
    canary: Canary,
) -> None:
    result = post(
        f"http://canary.test:{canary.port}/hook", b"{}", {}, connect_timeout=1, read_timeout=1,
        allow=LOCALHOST, resolve=resolver,
    )
    assert (result.status_code, result.address) == (204, "127.0.0.1")
    assert canary.hits[-1]["host"] == f"canary.test:{canary.port}"


def test_a_rebinding_name_is_refused_even_when_one_address_is_allowed(canary: Canary) -> None:
    before = len(canary.hits)
    result = post(
        f"http://rebind.test:{canary.port}/hook", b"{}", {}, connect_timeout=1, read_timeout=1,
        allow=parse_networks("93.184.216.0/24"), resolve=resolver,
    )
    assert result.error == "ForbiddenAddress"
    assert "127.0.0.1" in (result.detail or "")
    assert len(canary.hits) == before


# ------------------------------------------------------------------------------------------
# TLS: connecting to the checked IP keeps SNI and certificate verification on the host name


class TLSServer:
    def __init__(self, cert: Path, key: Path) -> None:
        self.sni: list[str | None] = []
        sni = self.sni

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        def remember(_sock: Any, server_name: str | None, _context: Any) -> None:
            sni.append(server_name)

        context.sni_callback = remember
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_tls_keeps_sni_and_verifies_the_host_name(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "canary.test")
    server = TLSServer(cert, key)
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        url = f"https://canary.test:{server.port}/hook"
        result = post(url, b"{}", {}, connect_timeout=2, read_timeout=2, allow=LOCALHOST,
                      resolve=resolver, verify=trusting)
        assert (result.status_code, result.address) == (200, "127.0.0.1"), result
        assert server.sni == ["canary.test"]
        # The same server under another name: the certificate does not match it.
        NAMES["other.test"] = ["127.0.0.1"]
        url = f"https://other.test:{server.port}/hook"
        result = post(url, b"{}", {}, connect_timeout=2, read_timeout=2, allow=LOCALHOST,
                      resolve=resolver, verify=trusting)
        assert result.error == "TLSError", result
    finally:
        NAMES.pop("other.test", None)
        server.close()
