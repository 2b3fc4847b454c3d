"""Gateway addresses: the forms accepted, the mistakes refused with a message, and how
many addresses each stands for."""

from __future__ import annotations

import pytest

from edgecloud.core.errors import InvalidInput
from edgecloud.core.targets import parse_target


@pytest.mark.parametrize(
    ("text", "hosts", "port", "listed"),
    [
        ("127.0.0.1:8001", ("127.0.0.1",), 8001, False),
        ("gateway.example.internal:443", ("gateway.example.internal",), 443, False),
        ("localhost:9", ("localhost",), 9, False),
        ("dns:///gateway.example:443", ("gateway.example",), 443, False),
        ("dns:gateway:1", ("gateway",), 1, False),
        ("[::1]:5", ("[::1]",), 5, False),
        ("ipv4:127.0.0.1:1,10.0.0.2:2", ("127.0.0.1", "10.0.0.2"), 1, True),
        ("ipv6:[::1]:5,[fe80::1]:6", ("[::1]", "[fe80::1]"), 5, True),
    ],
)
def test_accepted_forms(text, hosts, port, listed) -> None:
    """A balancer's address, a DNS name, and ipv4:/ipv6: lists parse to their hosts."""
    target = parse_target(text)
    assert (target.text, target.hosts, target.port, target.listed) == (text, hosts, port,
                                                                       listed)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("gateway", "is not one of HOST:PORT"),
        ("gateway:0", "port '0'"),
        ("gateway:http", "port 'http'"),
        ("bad host:5", "not a host name"),
        ("::1:5", "[ADDR]:PORT"),
        ("ipv4:", "lists no address"),
        ("ipv4:127.0.0.1", "a port is needed"),
        ("ipv4:127.0.0.1:1,300.0.0.1:2", "'300.0.0.1' is not an IPv4 address"),
        ("ipv4:[::1]:1", "is not an IPv4 address"),
        ("ipv6:127.0.0.1:5", "is not [ADDR]:PORT"),
        ("ipv6:[127.0.0.1]:5", "is not an IPv6 address"),
        ("unix:///run/gateway.sock", "scheme 'unix:' is not supported"),
        ("dns://resolver", "dns:///HOST:PORT"),
    ],
)
def test_mistakes_are_refused_with_a_message(text, fragment) -> None:
    """Each malformed address is refused with a message naming what is wrong."""
    with pytest.raises(InvalidInput, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        parse_target(text)


async def test_address_counts() -> None:
    """A list stands for each address in it; a name for what it resolves to now, and one
    when it does not resolve (gRPC keeps trying it)."""
    assert await parse_target("ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3").count_addresses() == 3
    assert await parse_target("127.0.0.1:1").count_addresses() == 1
    assert await parse_target("localhost:1").count_addresses() >= 1
    # A label over 63 characters: no resolver is asked, the name cannot resolve.
    assert await parse_target("a" * 64 + ".example:1").count_addresses() == 1
