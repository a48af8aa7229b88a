"""Addresses and routes on a link, over ``loxicni.net.rtnl``."""

from __future__ import annotations

import errno
import ipaddress

from loxicni.cni.types import IPAddress, IPInterface, IPNetwork, Route
from loxicni.net import rtnl
from loxicni.net.rtnl import NetlinkError, Rtnl

IFA_F_NODAD = rtnl.IFA_F_NODAD


def addresses(ipr: Rtnl, index: int) -> list[IPInterface]:
    """Global addresses on a link (link-local ones excluded)."""
    out: list[IPInterface] = []
    for body in ipr.call(rtnl.addr_dump(index)):
        _, prefixlen, _, attrs = rtnl.parse_addr(body)
        packed = attrs.get(rtnl.IFA_ADDRESS)
        if packed is None:
            continue
        iface = ipaddress.ip_interface((ipaddress.ip_address(packed), prefixlen))
        if not iface.ip.is_link_local:
            out.append(iface)
    return out


def add_address(ipr: Rtnl, index: int, address: IPInterface, *, dad: bool) -> bool:
    """Add an address; False if it was already there.

    Without DAD unless asked, so IPv6 is usable at once (DAD stalls ADD by 1-2 s).
    """
    nodad = address.version == 6 and not dad
    request = rtnl.addr_add(index, address.packed, address.network.prefixlen, nodad=nodad)
    try:
        ipr.call(request)
    except NetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise
        return False
    return True


def delete_address(ipr: Rtnl, index: int, address: IPInterface) -> None:
    try:
        ipr.call(rtnl.addr_del(index, address.packed, address.network.prefixlen))
    except NetlinkError as exc:
        if exc.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV):
            raise


def add_route(ipr: Rtnl, index: int, route: Route) -> None:
    """Add a route via ``index``; one already there is success."""
    family = rtnl.AF_INET if route.dst.version == 4 else rtnl.AF_INET6
    request = rtnl.route_add(
        family,
        route.dst.network_address.packed,
        route.dst.prefixlen,
        oif=index,
        gateway=route.gw.packed if route.gw is not None else None,
        priority=route.priority,
        table=route.table,
        scope=route.scope,
        mtu=route.mtu,
        advmss=route.advmss,
    )
    try:
        ipr.call(request)
    except NetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise


def routes(ipr: Rtnl, index: int) -> list[tuple[IPNetwork, IPAddress | None]]:
    """(dst, gateway) of the routes through a link, both families, main table."""
    out: list[tuple[IPNetwork, IPAddress | None]] = []
    for family, default in ((rtnl.AF_INET, "0.0.0.0/0"), (rtnl.AF_INET6, "::/0")):
        for body in ipr.call(rtnl.route_dump(family, oif=index)):
            msg = rtnl.parse_route_msg(body)
            dst = msg.attrs.get(rtnl.RTA_DST)
            net = ipaddress.ip_network((ipaddress.ip_address(dst), msg.dst_len) if dst else default)
            gw = msg.attrs.get(rtnl.RTA_GATEWAY)
            out.append((net, ipaddress.ip_address(gw) if gw else None))
    return out
