"""The overlay's vxlan devices, one per underlay family, and the scheme every node agrees on.

Each node reaches the others' pods through a vxlan device of its own (as flannel's vxlan
backend): learning off and no multicast group, so the kernel never floods or learns; every
remote node is a static FDB entry (its VTEP MAC -> its node IP) and a permanent neighbour
(its VTEP IP -> its VTEP MAC), which the sync in ``loxicni.net.overlay`` programs.

What peers must agree on without asking each other:

* VTEP MAC: derived from the node's name (a hash, locally administered unicast), so an agent
  that restarts, or a node whose device is recreated, gets the MAC its peers already hold;
  the name, not the node IP, so a node that changes address keeps it (only the FDB entries,
  keyed by MAC, change). One MAC per family: the two devices never share an address.
* VTEP IP: the network address of the node's pod CIDR (10.244.1.0, fd00:244:1::), held on the
  device as /32 or /128. A pod never gets it (host-local starts at the network address + 1,
  and the bridge's gateway is that + 1), it needs no allocation, and a peer computes it from
  the node's podCIDR alone. Held on the device it is the source of the node's own packets to
  remote pods, an address the remote node routes back through the overlay.
* MTU: the underlay's less the encapsulation (outer IPv4 20 or IPv6 40, UDP 8, VXLAN 8,
  inner Ethernet 14).

Ownership: the device names are the overlay's own (configured, one per family), and only a
vxlan link of such a name is taken as ours; a link of another kind there is an error, never
deleted. An existing device with the right parameters is kept as it is, so its FDB,
neighbours and routes (and the pods' flows) survive an agent restart; MTU, MAC and state are
corrected in place; only a changed VNI, port, local address or underlay (which the kernel
cannot change on a live device) recreates it.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
from dataclasses import dataclass

from loxicni.net import rtnl
from loxicni.net.errors import OverlayError
from loxicni.net.ip import IPAddress, IPInterface, IPNetwork, address
from loxicni.net.rtnl import NetlinkError, Rtnl

DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # the Linux kernel's historical default, flannel's; IANA's is 4789
OVERHEAD = {4: 50, 6: 70}  # bytes of encapsulation, by underlay IP version


def vtep_mac(node_name: str, version: int) -> str:
    """The VTEP MAC of ``node_name``'s IPv``version`` device (locally administered unicast)."""
    digest = bytearray(hashlib.sha256(f"loxi-cni vtep v{version} {node_name}".encode()).digest())
    digest[0] = (digest[0] & 0xFC) | 0x02
    return digest[:6].hex(":")


def vtep_address(pod_cidr: IPNetwork) -> IPInterface:
    """The VTEP IP of the node holding ``pod_cidr``, as a host address."""
    return ipaddress.ip_interface((pod_cidr.network_address, pod_cidr.max_prefixlen))


def device_mtu(underlay_mtu: int, version: int) -> int:
    """The MTU of a vxlan device over an underlay of ``underlay_mtu`` and IP ``version``."""
    return underlay_mtu - OVERHEAD[version]


@dataclass(frozen=True)
class VxlanSpec:
    """A vxlan device as the overlay wants it."""

    name: str
    vni: int
    port: int
    local: IPAddress  # the node IP: source of the encapsulated packets
    underlay: int  # ifindex the encapsulated packets leave by
    mtu: int
    mac: str
    address: IPInterface | None  # the VTEP address; None without a pod CIDR of the family


@dataclass(frozen=True)
class VxlanLink:
    """A link as found by name: ``kind`` tells whether it is a vxlan device at all."""

    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool
    vni: int
    port: int
    local: IPAddress | None
    underlay: int
    learning: bool


def get(rt: Rtnl, name: str) -> VxlanLink | None:
    """The link called ``name`` (of any kind), or None."""
    try:
        (body,) = rt.call(rtnl.link_get(name=name))
    except NetlinkError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    index, flags, attrs = rtnl.parse_link(body)
    kind, data = rtnl.parse_linkinfo(attrs)
    local = data.get(rtnl.IFLA_VXLAN_LOCAL) or data.get(rtnl.IFLA_VXLAN_LOCAL6)
    mac = attrs.get(rtnl.IFLA_ADDRESS)
    return VxlanLink(
        index=index,
        name=name,
        kind=kind,
        mac=mac.hex(":") if mac else "",
        mtu=rtnl.u32(attrs[rtnl.IFLA_MTU]) if rtnl.IFLA_MTU in attrs else 0,
        up=bool(flags & rtnl.IFF_UP),
        vni=rtnl.u32(data[rtnl.IFLA_VXLAN_ID]) if rtnl.IFLA_VXLAN_ID in data else 0,
        port=rtnl.be16(data[rtnl.IFLA_VXLAN_PORT]) if rtnl.IFLA_VXLAN_PORT in data else 0,
        local=address(local) if local else None,
        underlay=rtnl.u32(data[rtnl.IFLA_VXLAN_LINK]) if rtnl.IFLA_VXLAN_LINK in data else 0,
        learning=bool(data.get(rtnl.IFLA_VXLAN_LEARNING, b"\0")[0]),
    )


def _mismatch(link: VxlanLink, spec: VxlanSpec) -> str:
    """What the kernel cannot change on a live device and differs from ``spec`` ("" if none)."""
    for what, have, want in (
        ("VNI", link.vni, spec.vni),
        ("port", link.port, spec.port),
        ("local address", link.local, spec.local),
        ("underlay", link.underlay, spec.underlay),
        ("learning", link.learning, False),
    ):
        if have != want:
            return f"{what} {have} instead of {want}"
    return ""


def ensure(rt: Rtnl, spec: VxlanSpec) -> tuple[VxlanLink, str]:
    """The device of ``spec``, up, with exactly its VTEP address; and what was done to it
    ("" kept, "created", or "recreated: <why>").

    OverlayError if the name belongs to a link that is not a vxlan device.
    """
    link = get(rt, spec.name)
    done = ""
    if link is not None and link.kind != "vxlan":
        raise OverlayError(
            f"{spec.name} exists and is a {link.kind or 'device'}, not the overlay's vxlan"
        )
    if link is not None and (why := _mismatch(link, spec)):
        rt.call(rtnl.link_del(link.index))
        link, done = None, f"recreated: {why}"
    if link is None:
        request = rtnl.link_add_vxlan(
            spec.name,
            vni=spec.vni,
            port=spec.port,
            local=spec.local.packed,
            underlay=spec.underlay,
            mac=spec.mac,
            mtu=spec.mtu,
        )
        try:
            rt.call(request)
        except NetlinkError as exc:
            raise OverlayError(f"cannot create vxlan device {spec.name}: {exc}") from exc
        done = done or "created"
        link = get(rt, spec.name)
        if link is None:
            raise OverlayError(f"vxlan device {spec.name} vanished after creation")
    fixes: list[rtnl.Request] = []
    if link.mac != spec.mac:
        fixes.append(rtnl.link_set_address(link.index, spec.mac))
    if link.mtu != spec.mtu or not link.up:
        fixes.append(rtnl.link_set(link.index, mtu=spec.mtu, up=True))
    fixes += _address_fixes(rt, link.index, spec.address)
    failed = [str(err) for err in rt.batch(fixes) if err is not None]
    if failed:
        raise OverlayError(f"cannot configure vxlan device {spec.name}: {'; '.join(failed)}")
    if fixes and not all(r[0] in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR) for r in fixes):
        link = get(rt, spec.name) or link
    return link, done


def _address_fixes(rt: Rtnl, index: int, want: IPInterface | None) -> list[rtnl.Request]:
    """Requests that leave exactly ``want`` as the device's global address."""
    fixes: list[rtnl.Request] = []
    found = False
    for body in rt.call(rtnl.addr_dump(index)):
        _, prefixlen, _, attrs = rtnl.parse_addr(body)
        packed = attrs.get(rtnl.IFA_LOCAL) or attrs.get(rtnl.IFA_ADDRESS)
        if packed is None:
            continue
        have = ipaddress.ip_interface((address(packed), prefixlen))
        if have.ip.is_link_local:
            continue
        if have == want:
            found = True
        else:
            fixes.append(rtnl.addr_del(index, have.ip.packed, prefixlen))
    if want is not None and not found:
        prefixlen = want.network.prefixlen
        fixes.append(rtnl.addr_add(index, want.ip.packed, prefixlen, nodad=want.version == 6))
    return fixes


def delete(rt: Rtnl, name: str) -> bool:
    """Delete the overlay's vxlan device ``name`` (its FDB, neighbours and routes go with it);
    False if there is none. A link of another kind with that name is left alone."""
    link = get(rt, name)
    if link is None or link.kind != "vxlan":
        return False
    try:
        rt.call(rtnl.link_del(link.index))
    except NetlinkError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True
