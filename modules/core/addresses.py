"""Which network addresses the server may fetch from (SSRF guard), for every outgoing request:
image URLs in API payloads and the extension index. Stdlib only."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from modules.core.errors import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""(host, port) -> the addresses it resolves to (a stub in tests)."""


def address_allowed(ip: IPAddress) -> bool:
    """Only global unicast addresses may be fetched (IPv4-mapped IPv6 judged as the IPv4 address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    return ip.is_global


def system_resolver(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def checked_address(
    host: str,
    port: int,
    resolver: Resolver,
    *,
    prefix: str = "",
    refusal: str = "request to a local resource not allowed",
    allowed: Callable[[IPAddress], bool] | None = None,
) -> str:
    """The address to connect to (the connection must then go to it, not resolve again): every
    address `host` resolves to must be allowed, else a ValidationError `"{prefix}{refusal} (...)"`."""
    allow = allowed or address_allowed
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolver(host, port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise ValidationError(f"{prefix}cannot resolve {host!r}: {exc}") from None
    if not addresses:
        raise ValidationError(f"{prefix}cannot resolve {host!r}")
    for ip in addresses:
        if not allow(ip):
            raise ValidationError(f"{prefix}{refusal} ({host} is {ip})")
    return str(addresses[0])
