"""IP address and CIDR text, read the way Go's ``net`` package reads it.

Runtimes, IPAM plugins and the reference store all write addresses with Go, so we accept what
Go accepts: no IPv6 zones (``%eth0``), a CIDR always ``address/prefix-length`` (never a bare
address or a dotted netmask), and an IPv4-mapped IPv6 address read as the IPv4 address.
"""

from __future__ import annotations

import ipaddress
import re

from loxicni.cni.types import IPAddress

_PREFIX = re.compile(r"[0-9]+")


def canonical(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 becomes IPv4 (Go's To4)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip(text: str) -> IPAddress:
    """A bare address, as Go's net.ParseIP reads it; ValueError if it is not one."""
    if "%" in text:
        raise ValueError(text)
    return canonical(ipaddress.ip_address(text))


def parse_cidr(text: str) -> tuple[IPAddress, int]:
    """``addr/prefix`` like Go's net.ParseCIDR, host bits kept (the caller judges them).

    ValueError if it is not a CIDR.
    """
    addr_text, sep, prefix_text = text.partition("/")
    if not sep or not _PREFIX.fullmatch(prefix_text) or "%" in addr_text:
        raise ValueError(text)
    addr = ipaddress.ip_address(addr_text)
    prefix = int(prefix_text)
    if prefix > addr.max_prefixlen:
        raise ValueError(text)
    return addr, prefix


def parse_pool_cidr(text: str) -> tuple[IPAddress, int]:
    """``parse_cidr`` for an address pool: an IPv4-mapped IPv6 network is refused, as the
    reference host-local does (its address canonicalizes to IPv4 while the prefix stays
    IPv6)."""
    addr, prefix = parse_cidr(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise ValueError(text)
    return addr, prefix
