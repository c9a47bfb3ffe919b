"""The outbound policy against hostile URL forms. Pure checks only: nothing here opens a connection, so a
broken guard could never send traffic anywhere (the fetch tests in tests/integration use loopback only)."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from yarl import URL

from consumers.outbound import OutboundPolicy, RefusedAddress

POLICY = OutboundPolicy()

# Hosts as URLs spell them, with what they resolve to when they are names (resolved by getaddrinfo without
# DNS: numeric forms and /etc/hosts names).
HOSTILE_LITERALS = [
    "http://127.0.0.1/",
    "http://127.1.2.3/",
    "http://0.0.0.0/",
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.0.1/",
    "http://100.64.0.1/",
    "http://192.0.0.192/",
    "http://198.18.0.1/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://[::1]/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[::127.0.0.1]/",
    "http://[2001:db8::1]/",
]
# Spellings that only getaddrinfo turns into addresses: decimal, octal, hexadecimal and short forms.
HOSTILE_NUMERIC_NAMES = ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "017700000001"]


@pytest.mark.parametrize("url", HOSTILE_LITERALS)
def test_hostile_literals_are_refused_before_any_connection(url: str) -> None:
    host = URL(url).host
    assert host is not None
    with pytest.raises(RefusedAddress):
        POLICY.check_literal(host)


@pytest.mark.parametrize("name", HOSTILE_NUMERIC_NAMES)
def test_numeric_spellings_resolve_to_loopback_and_are_refused(name: str) -> None:
    # getaddrinfo parses these itself (no DNS query); the resolver then checks the addresses it got.
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    assert addresses == {"127.0.0.1"}
    assert not any(POLICY.allows(name, ipaddress.ip_address(address)) for address in addresses)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    POLICY.check_literal(address)
    assert POLICY.allows("example.com", ipaddress.ip_address(address))


def test_operators_can_open_cidrs_and_names() -> None:
    policy = OutboundPolicy(["10.1.0.0/16", "objects.internal", " "])
    assert policy.allows("x", ipaddress.ip_address("10.1.2.3"))
    assert policy.allows("x", ipaddress.ip_address("::ffff:10.1.2.3"))
    assert not policy.allows("x", ipaddress.ip_address("10.2.0.1"))
    assert policy.allows("OBJECTS.internal", ipaddress.ip_address("10.9.9.9"))
    policy.check_literal("10.1.0.5")
    with pytest.raises(RefusedAddress):
        policy.check_literal("10.2.0.5")
