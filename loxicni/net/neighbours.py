"""Static neighbour and FDB entries of one link, as read back from the kernel.

On a vxlan device a permanent neighbour maps a remote VTEP IP to its MAC (so the kernel never
resolves it), and an FDB entry of the device itself (NTF_SELF) maps that MAC to the remote
node IP the frame is encapsulated to. Only permanent neighbours are reported: others are the
kernel's own (resolution attempts), never ours.
"""

from __future__ import annotations

from loxicni.net import rtnl
from loxicni.net.ip import IPAddress, address, family
from loxicni.net.rtnl import Rtnl


def permanent(rt: Rtnl, index: int, version: int) -> dict[IPAddress, str]:
    """The permanent IPv``version`` neighbours of link ``index``: {IP: MAC}."""
    out: dict[IPAddress, str] = {}
    for body in rt.call(rtnl.neigh_dump(family(version), index)):
        _, link, state, _, attrs = rtnl.parse_neigh(body)
        dst, mac = attrs.get(rtnl.NDA_DST), attrs.get(rtnl.NDA_LLADDR)
        if link == index and state & rtnl.NUD_PERMANENT and dst and mac:
            out[address(dst)] = mac.hex(":")
    return out


def fdb(rt: Rtnl, index: int) -> dict[str, list[IPAddress]]:
    """The FDB entries of link ``index`` itself: {MAC: remote IPs}. A unicast MAC has one
    remote (vxlan appends more only to the all-zero and multicast MACs of flooding)."""
    out: dict[str, list[IPAddress]] = {}
    for body in rt.call(rtnl.fdb_dump(index)):
        _, link, _, flags, attrs = rtnl.parse_neigh(body)
        mac, dst = attrs.get(rtnl.NDA_LLADDR), attrs.get(rtnl.NDA_DST)
        if link == index and flags & rtnl.NTF_SELF and mac:
            remotes = out.setdefault(mac.hex(":"), [])
            if dst:
                remotes.append(address(dst))
    return out
