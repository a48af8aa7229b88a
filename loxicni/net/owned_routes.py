"""Routes marked with a route protocol number of our own, as read back from the kernel.

The protocol number (``rtm_protocol``, the ``proto`` of ``ip route``) is how a route tells who
made it: the kernel keeps it, filters dumps by it and, in a delete request, deletes only a
route that carries it. Marking our routes lets the overlay find exactly its own among
everyone's in a table, and never touch another's.
"""

from __future__ import annotations

from typing import NamedTuple

from loxicni.net import rtnl
from loxicni.net.ip import IPAddress, IPNetwork, address, family, network
from loxicni.net.rtnl import Rtnl

DEFAULT_METRIC = {4: 0, 6: 1024}  # what the kernel gives a route added without one


class OwnedRoute(NamedTuple):
    """One of our routes (a tuple: thousands are read per sync)."""

    dst: IPNetwork
    gateway: IPAddress | None  # None: no single gateway (multipath, or a device route)
    oif: int
    onlink: bool
    metric: int


def dump(rt: Rtnl, version: int, protocol: int, table: int) -> list[OwnedRoute]:
    """The IPv``version`` routes of ``table`` that carry ``protocol``."""
    out: list[OwnedRoute] = []
    for body in rt.call(rtnl.route_dump_protocol(family(version), protocol, table)):
        msg = rtnl.parse_route_msg(body)
        # Kernels without strict dump filtering answer with everything: filter here too.
        if msg.protocol != protocol or msg.table != table:
            continue
        dst, gateway = msg.attrs.get(rtnl.RTA_DST), msg.attrs.get(rtnl.RTA_GATEWAY)
        zero = bytes(4 if version == 4 else 16)
        oif, metric = msg.attrs.get(rtnl.RTA_OIF), msg.attrs.get(rtnl.RTA_PRIORITY)
        out.append(
            OwnedRoute(
                dst=network(dst or zero, msg.dst_len),
                gateway=address(gateway) if gateway else None,
                oif=rtnl.u32(oif) if oif else 0,
                onlink=bool(msg.flags & rtnl.RTNH_F_ONLINK),
                metric=rtnl.u32(metric) if metric else 0,
            )
        )
    return out


def delete_request(route: OwnedRoute, protocol: int, table: int) -> rtnl.Request:
    """Delete ``route``, only if it still carries ``protocol``. A metric of 0 (IPv4's
    default) is left out of the request, where the kernel reads 0 as "any"; the lowest
    metric is the one it finds first."""
    return rtnl.route_del(
        family(route.dst.version),
        route.dst.network_address.packed,
        route.dst.prefixlen,
        protocol=protocol,
        table=table,
        priority=route.metric or None,
    )
