"""Outbound address policy: refuse loopback, private, link-local, multicast and metadata addresses.

Names are checked inside the HTTP client's resolver, so the connection goes to the very address that was
checked (no DNS rebinding between check and connect). The client skips its resolver for IP literals, so
`check_literal` covers those, for the first URL and for every redirect hop.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RefusedAddress(OSError):
    """The destination is not allowed by the outbound policy."""


def _embedded_ipv4(address: IpAddress) -> IpAddress:
    """The IPv4 address an IPv6 form carries (mapped, NAT64, 6to4): judged as that address, not as IPv6.

    6to4 matters: Python counts 2002::/16 as global, yet 2002:7f00:1:: routes to 127.0.0.1 via a relay.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


# Ranges refused even where Python's is_global says yes on some versions: IETF protocol assignments (Oracle
# Cloud's metadata service sits at 192.0.0.192) and IPv4-compatible IPv6 (::a.b.c.d, deprecated, still routed
# by some stacks).
_ALWAYS_REFUSED = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("::/96"))


def is_public(address: IpAddress) -> bool:
    inner = _embedded_ipv4(address)
    if any(inner in network or address in network for network in _ALWAYS_REFUSED):
        return False
    flags = (inner.is_private, inner.is_loopback, inner.is_link_local, inner.is_multicast, inner.is_reserved)
    return inner.is_global and not any(flags) and not inner.is_unspecified


class OutboundPolicy:
    def __init__(self, allow: Sequence[str] = ()) -> None:
        self._networks = []
        self._hosts = set()
        for entry in (item.strip() for item in allow):
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(entry.lower())

    def allows(self, host: str, address: IpAddress) -> bool:
        if host.lower() in self._hosts:
            return True
        inner = _embedded_ipv4(address)
        if any(inner in network or address in network for network in self._networks):
            return True
        return is_public(address)

    def check_literal(self, host: str) -> None:
        """Refuse an IP-literal host the policy does not allow; names are left to the resolver."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return
        if not self.allows(host, address):
            raise RefusedAddress(f"{host} is not allowed: private or internal address")


class GuardedResolver(AbstractResolver):
    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        allowed = [r for r in results if self._policy.allows(host, ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise RefusedAddress(
                f"{host} resolves only to addresses that are not allowed (private or internal)"
            )
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


def guarded_session(policy: OutboundPolicy, *, timeout_s: float) -> aiohttp.ClientSession:
    """An HTTP client whose every connection goes through the policy (no DNS cache: each one is checked)."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy), use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))
