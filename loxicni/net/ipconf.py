"""Addresses and routes on a link, through pyroute2."""

from __future__ import annotations

import errno
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from loxicni.cni.types import IPAddress, IPInterface, IPNetwork, Route

IFA_F_NODAD = 0x02


def addresses(ipr: IPRoute, index: int) -> list[IPInterface]:
    """Global addresses on a link (link-local ones excluded)."""
    out: list[IPInterface] = []
    for msg in ipr.get_addr(index=index):
        iface = ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
        if not iface.ip.is_link_local:
            out.append(iface)
    return out


def add_address(ipr: IPRoute, index: int, address: IPInterface, *, dad: bool) -> bool:
    """Add an address; False if it was already there.

    Without DAD unless asked, so IPv6 is usable at once (DAD stalls ADD by 1-2 s).
    """
    attrs: dict[str, object] = {
        "index": index,
        "address": str(address.ip),
        "prefixlen": address.network.prefixlen,
    }
    if address.version == 6 and not dad:
        attrs["flags"] = IFA_F_NODAD
    try:
        ipr.addr("add", **attrs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
        return False
    return True


def delete_address(ipr: IPRoute, index: int, address: IPInterface) -> None:
    try:
        ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
    except NetlinkError as exc:
        if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
            raise


def add_route(ipr: IPRoute, index: int, route: Route) -> None:
    """Add a route via ``index``; one already there is success."""
    attrs: dict[str, object] = {"dst": str(route.dst), "oif": index}
    if route.gw is not None:
        attrs["gateway"] = str(route.gw)
    if route.priority is not None:
        attrs["priority"] = route.priority
    if route.table is not None:
        attrs["table"] = route.table
    if route.scope is not None:
        attrs["scope"] = route.scope
    metrics: dict[str, int] = {}
    if route.mtu:
        metrics["mtu"] = route.mtu
    if route.advmss:
        metrics["advmss"] = route.advmss
    if metrics:
        attrs["metrics"] = metrics
    try:
        ipr.route("add", **attrs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def routes(ipr: IPRoute, index: int) -> list[tuple[IPNetwork, IPAddress | None]]:
    """(dst, gateway) of the routes through a link, both families, main table."""
    out: list[tuple[IPNetwork, IPAddress | None]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, oif=index):
            dst = msg.get("RTA_DST")
            net = ipaddress.ip_network(
                f"{dst}/{msg['dst_len']}"
                if dst
                else ("0.0.0.0/0" if family == socket.AF_INET else "::/0")
            )
            gw = msg.get("RTA_GATEWAY")
            out.append((net, ipaddress.ip_address(gw) if gw else None))
    return out
