"""The underlay: a node's own interface and address towards the other nodes, per IP family.

Kubernetes names a node's address (its InternalIP) but not the interface behind it. The
interface that holds that address is the one the other nodes reach it by: vxlan sends from
that address through that interface, and its connected networks say which nodes are one hop
away (for direct routes). A node IP that is not on any interface here (a NAT in front of the
node) falls back to the kernel's route towards it and the source address it would use.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from loxicni.net import links, rtnl
from loxicni.net.errors import OverlayError
from loxicni.net.ip import IPAddress, IPInterface, IPNetwork, address, family
from loxicni.net.rtnl import NetlinkError, Rtnl


@dataclass(frozen=True)
class Underlay:
    """The node IP of one family and the interface holding it."""

    ip: IPAddress
    index: int
    name: str
    mtu: int
    subnets: tuple[IPNetwork, ...]  # the interface's connected networks of ``ip``'s family

    @property
    def version(self) -> int:
        return self.ip.version

    def on_link(self, ip: IPAddress) -> bool:
        """Whether ``ip`` is one hop away, in a network of this interface."""
        return any(ip in subnet for subnet in self.subnets)


def _global_addresses(rt: Rtnl, version: int) -> list[tuple[int, IPInterface]]:
    """(ifindex, address) of every non-link-local address of one family on this node."""
    out: list[tuple[int, IPInterface]] = []
    for body in rt.call(rtnl.addr_dump(0, family(version))):
        _, prefixlen, index, attrs = rtnl.parse_addr(body)
        # IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on a
        # point-to-point link); IPv6 sends only IFA_ADDRESS.
        packed = attrs.get(rtnl.IFA_LOCAL) or attrs.get(rtnl.IFA_ADDRESS)
        if packed is None:
            continue
        iface = ipaddress.ip_interface((address(packed), prefixlen))
        if not iface.ip.is_link_local:
            out.append((index, iface))
    return out


def find(rt: Rtnl, node_ip: IPAddress) -> Underlay:
    """The underlay of ``node_ip``: the interface holding it, else the route towards it.

    OverlayError if neither exists (no route to the node's own address).
    """
    addresses = _global_addresses(rt, node_ip.version)
    index = next((i for i, iface in addresses if iface.ip == node_ip), None)
    local = node_ip
    if index is None:
        index, local = _route_towards(rt, node_ip)
    link = links.get_by_index(rt, index)
    if link is None:
        raise OverlayError(f"underlay of {node_ip}: interface {index} vanished")
    subnets = tuple(dict.fromkeys(iface.network for i, iface in addresses if i == index))
    return Underlay(ip=local, index=index, name=link.name, mtu=link.mtu, subnets=subnets)


def _route_towards(rt: Rtnl, node_ip: IPAddress) -> tuple[int, IPAddress]:
    try:
        (answer,) = rt.call(rtnl.route_get(node_ip.packed))
    except NetlinkError as exc:
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
            raise OverlayError(f"node IP {node_ip} is not on this node and has no route") from exc
        raise
    msg = rtnl.parse_route_msg(answer)
    oif, src = msg.attrs.get(rtnl.RTA_OIF), msg.attrs.get(rtnl.RTA_PREFSRC)
    if oif is None or src is None:
        raise OverlayError(f"node IP {node_ip} is not on this node and no route names a source")
    return rtnl.u32(oif), address(src)
