"""Gateway addresses as clients give them, and how channels spread calls over them.

A gateway address is one of:

- ``HOST:PORT`` (or ``dns:HOST:PORT``, ``dns:///HOST:PORT``): a load balancer's
  address, or a DNS name with several addresses (a headless Kubernetes Service:
  one per replica). ``[ADDR]:PORT`` for an IPv6 literal.
- ``ipv4:ADDR:PORT,ADDR:PORT,...``: a list of IPv4 addresses.
- ``ipv6:[ADDR]:PORT,[ADDR]:PORT,...``: a list of IPv6 addresses.

gRPC resolves the name (again when a connection is lost) and the channel's
round-robin policy keeps a connection to every address it resolved, each new
call going to the next one that is up; a balancer's single address is one
connection, as it always was.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
from dataclasses import dataclass

from edgecloud.core.errors import InvalidInput

ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
"""The service config every client channel is opened with: calls spread over all the
addresses the target resolves to."""

FORMS = ("HOST:PORT, dns:///HOST:PORT, ipv4:ADDR:PORT[,ADDR:PORT...] or "
         "ipv6:[ADDR]:PORT[,[ADDR]:PORT...]")
_OTHER_SCHEMES = {"unix", "unix-abstract", "vsock", "xds", "google-c2p"}
"""gRPC target schemes that do not name a gateway on the network."""
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*"
                   r"[A-Za-z0-9])?)*\.?$")


@dataclass(frozen=True, slots=True)
class GatewayTarget:
    """A parsed gateway address."""

    text: str
    """The address as given (what the gRPC channel is opened on)."""
    hosts: tuple[str, ...]
    """The host name, or each listed IP address."""
    port: int
    """The port of the name (for a list: of its first address)."""
    listed: bool
    """True for an ``ipv4:``/``ipv6:`` list: :attr:`hosts` are all the addresses."""

    async def count_addresses(self) -> int:
        """How many addresses the target stands for now (a name is resolved; one when it
        does not resolve)."""
        if self.listed:
            return len(self.hosts)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.hosts[0].strip("[]"), self.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return 1
        return max(1, len({info[4][:2] for info in infos}))


def _port(text: str, address: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise InvalidInput(f"gateway address {address!r}: port {text!r} is not 1-65535")
    return int(text)


def _host_port(item: str, address: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep or not host:
        raise InvalidInput(f"gateway address {address!r} is not one of {FORMS}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidInput(f"gateway address {address!r}: unclosed [ in {item!r}")
        _ip(host[1:-1], 6, address)
    elif ":" in host:
        raise InvalidInput(f"gateway address {address!r}: write an IPv6 address as "
                           f"[ADDR]:PORT")
    elif not _HOST.match(host):
        raise InvalidInput(f"gateway address {address!r}: {host!r} is not a host name")
    return host, _port(port, address)


def _ip(text: str, version: int, address: str) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is None or ip.version != version:
        raise InvalidInput(f"gateway address {address!r}: {text!r} is not an IPv{version} "
                           f"address")
    return text


def _listed(body: str, version: int, address: str) -> tuple[list[str], list[int]]:
    hosts, ports = [], []
    for item in body.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host:
            raise InvalidInput(f"gateway address {address!r}: {item!r} is not ADDR:PORT "
                               f"(a port is needed)")
        if version == 6:
            if not (host.startswith("[") and host.endswith("]")):
                raise InvalidInput(f"gateway address {address!r}: {item!r} is not "
                                   f"[ADDR]:PORT")
            _ip(host[1:-1], 6, address)
        else:
            _ip(host, 4, address)
        hosts.append(host)
        ports.append(_port(port, address))
    return hosts, ports


def parse_target(address: str) -> GatewayTarget:
    """Check a gateway address; raises InvalidInput saying what is wrong and what is
    accepted."""
    text = address.strip()
    if not text:
        raise InvalidInput(f"gateway address is empty: give {FORMS}")
    scheme, sep, body = text.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        if not body:
            raise InvalidInput(f"gateway address {address!r} lists no address")
        hosts, ports = _listed(body, 4 if scheme == "ipv4" else 6, address)
        return GatewayTarget(text, tuple(hosts), ports[0], listed=True)
    if sep and scheme == "dns":
        if body.startswith("//"):
            _, slash, body = body[2:].partition("/")
            if not slash:
                raise InvalidInput(f"gateway address {address!r}: write dns:///HOST:PORT")
    elif sep and (body.startswith("/") or scheme in _OTHER_SCHEMES):
        raise InvalidInput(f"gateway address {address!r}: scheme {scheme + ':'!r} is not "
                           f"supported; give {FORMS}")
    else:
        body = text
    host, port = _host_port(body, address)
    return GatewayTarget(text, (host,), port, listed=False)
