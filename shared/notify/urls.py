"""Notify URLs at intake: refuse (7004) what could never be delivered, instead of accepting it
and retrying it for a day.

Two checks, both without the network:

- :func:`check_syntax`: an http(s) URL with a host that can exist: no whitespace anywhere (a
  URL carries it percent-encoded), a host that is an IP literal or a DNS name (labels of
  letters, digits, ``-`` and ``_``, at most 63 characters each and 253 in all, after IDNA
  encoding of a non-ASCII name), and a port from 1 to 65535 when one is given.
- :func:`intake_refusal`: the SSRF guard's verdict (``shared/notify/ssrf.py``, with the
  allow-list ``EVENTDESK_NOTIFY_ALLOW_NETWORKS``) where it is known without DNS: a host that is
  an IP literal, including the numeric forms the C library reads as IPv4 (``127.1``,
  ``2130706433``, ``0x7f000001``), or ``localhost`` and names under ``.localhost``, which
  mean 127.0.0.1 and ::1 (RFC 6761). Those are refused when neither address is allowed; when
  one is, the worker decides on the addresses the name really resolves to. Any other name is
  judged at connect time, as before.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, ip_address
from urllib.parse import urlsplit

from shared.notify.ssrf import METADATA, IPAddress, IPNetwork, check_address

MAX_URL_LENGTH = 2048
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# What inet_aton may read as an IPv4 address: digits, dots and hexadecimal with 0x.
_NUMERIC = re.compile(r"^[0-9a-fx.]+$")
_LOCALHOST = (ip_address("127.0.0.1"), ip_address("::1"))


def _host_problem(host: str, bracketed: bool) -> str | None:
    try:
        address = ip_address(host)
    except ValueError:
        address = None
    if bracketed:
        return None if address is not None and address.version == 6 else "bad IPv6 address"
    if address is not None:
        return None
    try:
        name = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return "a host name that cannot exist"
    labels = name.removesuffix(".").split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return "a host name that cannot exist"
    return None


def check_syntax(value: str) -> str:
    """``value`` if it is a notify URL that can exist; else ValueError saying what is wrong."""
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"notifyurl is longer than {MAX_URL_LENGTH} characters")
    if any(character.isspace() for character in value):
        raise ValueError("notifyurl must not contain whitespace (percent-encode it)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("notifyurl must be an http(s) URL with a host")
    problem = _host_problem(parts.hostname, parts.netloc.rpartition("@")[2].startswith("["))
    if problem is not None:
        raise ValueError(f"notifyurl has {problem}: {parts.hostname!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError("notifyurl has an invalid port") from exc
    if port == 0:
        raise ValueError("notifyurl has an invalid port")
    return value


def _known_addresses(host: str) -> tuple[IPAddress, ...]:
    """The addresses ``host`` stands for without DNS; empty for a name to resolve."""
    if host == "localhost" or host.endswith(".localhost"):
        return _LOCALHOST
    try:
        return (ip_address(host),)
    except ValueError:
        pass
    if _NUMERIC.match(host):
        try:
            return (IPv4Address(socket.inet_aton(host)),)
        except OSError:
            pass
    return ()


def intake_refusal(url: str, allow: Sequence[IPNetwork]) -> str | None:
    """Why the SSRF guard will certainly refuse ``url`` (a URL :func:`check_syntax` passed),
    or None. The message says what to do about it."""
    host = (urlsplit(url).hostname or "").lower()
    addresses = _known_addresses(host)
    reasons = [check_address(address, allow) for address in addresses]
    if not reasons or not all(reasons):
        return None
    if any(address in METADATA for address in addresses):
        return (f"notifyurl host {host} is a cloud metadata address: notifications never go "
                "there (EVENTDESK_NOTIFY_ALLOW_NETWORKS cannot allow it)")
    return (f"notifyurl host {host} is {reasons[0]}: notifications may not go there unless "
            "its network is allowed (EVENTDESK_NOTIFY_ALLOW_NETWORKS)")
