"""Which IP addresses a notify URL may reach: the pure rule of the SSRF guard.

A notify URL is given by the caller, so without a guard it is a way to make our workers POST to
our own network: the database, Redis, the cloud metadata service. :func:`check_address` says
whether one resolved address may be connected to; ``shared/notify/http.py`` applies it to every
address a host name resolves to, at connect time, and connects only to an address it checked
(so DNS rebinding between a check and the connect is impossible).

Written here rather than taken from a library: the Python library for this (``advocate``) is
archived and pins an old ``requests``; the rule itself is a few lines over :mod:`ipaddress`, and
the part that matters, connecting to the very address that was checked, has to live in our own
httpx transport anyway.

Refused: loopback, private (RFC 1918, ULA), link-local, shared address space (CGNAT
100.64.0.0/10), multicast, unspecified, reserved and every other address that is not globally
routable; IPv6 forms that carry one of those IPv4 addresses (IPv4-mapped ``::ffff:0:0/96``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``); and cloud metadata addresses, even inside an allow-listed
network. The operator may allow networks (``EVENTDESK_NOTIFY_ALLOW_NETWORKS``), for a receiver
on the same private network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

CGNAT = IPv4Network("100.64.0.0/10")
NAT64 = IPv6Network("64:ff9b::/96")
# Instance metadata and platform services: never reachable, even when allow-listed.
METADATA = frozenset(ip_address(address) for address in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle ...
    "169.254.170.2",  # AWS ECS task metadata
    "169.254.170.23",  # AWS EKS pod identity
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure wire server (a public address!)
    "192.0.0.192",  # Oracle Cloud (classic)
))


class ForbiddenAddress(Exception):
    """The notify URL's host is, or resolves to, an address it may not reach."""


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``"10.1.0.0/16, fd12::/48"`` -> networks; raises ValueError on a malformed one."""
    return tuple(ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _targets(address: IPAddress) -> list[IPAddress]:
    """The addresses a connection to ``address`` really reaches, for the rules to judge."""
    if isinstance(address, IPv4Address):
        return [address]
    if address.scope_id:  # fe80::1%eth0: the rules are about the address, not the interface
        address = IPv6Address(str(address).split("%", 1)[0])
    if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
        return [address.ipv4_mapped]
    if address in NAT64:  # the NAT64 gateway connects to the embedded IPv4 address
        return [IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:  # 6to4 relays to the embedded IPv4 address
        return [address, address.sixtofour]
    return [address]


_RULES: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("loopback", lambda a: a.is_loopback),
    ("unspecified", lambda a: a.is_unspecified),
    ("link-local", lambda a: a.is_link_local),
    ("multicast", lambda a: a.is_multicast),
    ("shared address space (CGNAT)", lambda a: isinstance(a, IPv4Address) and a in CGNAT),
    ("private", lambda a: a.is_private),
    ("reserved", lambda a: a.is_reserved),
    ("site-local", lambda a: isinstance(a, IPv6Address) and a.is_site_local),
    ("not globally routable", lambda a: not a.is_global),
)


def _reason(address: IPAddress) -> str | None:
    return next((reason for reason, applies in _RULES if applies(address)), None)


def check_address(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``address`` may not be connected to, or None if it may."""
    targets = _targets(address)
    if any(target in METADATA for target in targets):
        return "cloud metadata address"
    for target in targets:
        if _allowed(target, allow):
            continue
        reason = _reason(target)
        if reason is not None:
            return reason if target == address else f"carries {target}: {reason}"
    return None


def _allowed(address: IPAddress, allow: Iterable[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in allow)


def check_addresses(host: str, addresses: Sequence[IPAddress], allow: Sequence[IPNetwork]) -> None:
    """Raise :class:`ForbiddenAddress` unless every address ``host`` resolved to is allowed.

    One forbidden address refuses the host, even if others are fine: a name that resolves to a
    public and a private address is how rebinding attacks look.
    """
    if not addresses:
        raise ForbiddenAddress(f"{host} resolves to no address")
    for address in addresses:
        reason = check_address(address, allow)
        if reason is not None:
            raise ForbiddenAddress(f"{host} resolves to {address} ({reason})")
