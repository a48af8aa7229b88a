"""The cluster as one node sees it, and the kernel entries that reach the other nodes' pods.

Pure (no kernel): from this node, its peers and the mode, ``plan`` computes the desired
state, which ``loxicni.net.overlay`` compares with the kernel's. Per peer and IP family, the
peer's pod CIDR is reached either

* directly: ``podCIDR via <peer node IP> dev <underlay>`` (flannel's host-gw), which needs the
  peer one hop away, in a network of this node's underlay interface; or
* through vxlan: ``podCIDR via <peer VTEP IP> dev <vxlan> onlink``, a permanent neighbour
  ``VTEP IP -> VTEP MAC`` and an FDB entry ``VTEP MAC -> peer node IP`` on the device.

``Mode.AUTO`` picks the first for peers one hop away and the second for the rest (flannel's
DirectRouting). A peer that cannot be reached as asked (no address of the family, a pod CIDR
overlapping another node's, a duplicate VTEP MAC, not one hop away in ``routes`` mode) is
left out and reported, and the others go on: one bad Node must not cut the cluster.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from loxicni.net.errors import OverlayError
from loxicni.net.ip import VERSIONS, IPAddress, IPNetwork
from loxicni.net.underlay import Underlay
from loxicni.net.vxlan import vtep_mac


class Mode(StrEnum):
    ROUTES = "routes"  # podCIDR via node IP: all nodes on one L2 segment
    VXLAN = "vxlan"  # every peer through the vxlan device
    AUTO = "auto"  # direct routes to peers one hop away, vxlan to the others


def _one_per_family(what: str, items: tuple[IPAddress, ...] | tuple[IPNetwork, ...]) -> None:
    versions = [item.version for item in items]
    if len(versions) != len(set(versions)):
        raise OverlayError(f"{what}: at most one per IP family, got {', '.join(map(str, items))}")


@dataclass(frozen=True)
class Peer:
    """Another node: its name, node IP and pod CIDR per family, and optionally VTEP MACs
    (by default derived from the name, as every node derives its own)."""

    name: str
    node_ips: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()
    vtep_mac4: str | None = None
    vtep_mac6: str | None = None

    def __post_init__(self) -> None:
        _one_per_family(f"node {self.name} IPs", self.node_ips)
        _one_per_family(f"node {self.name} pod CIDRs", self.pod_cidrs)

    def node_ip(self, version: int) -> IPAddress | None:
        return next((ip for ip in self.node_ips if ip.version == version), None)

    def pod_cidr(self, version: int) -> IPNetwork | None:
        return next((net for net in self.pod_cidrs if net.version == version), None)

    def vtep_mac(self, version: int) -> str:
        given = self.vtep_mac4 if version == 4 else self.vtep_mac6
        return given.lower() if given else vtep_mac(self.name, version)


@dataclass(frozen=True)
class LocalNode:
    """This node: its name, its underlay per family and its pod CIDRs."""

    name: str
    underlays: tuple[Underlay, ...]
    pod_cidrs: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        _one_per_family(f"node {self.name} IPs", tuple(u.ip for u in self.underlays))
        _one_per_family(f"node {self.name} pod CIDRs", self.pod_cidrs)

    def underlay(self, version: int) -> Underlay | None:
        return next((u for u in self.underlays if u.version == version), None)

    def pod_cidr(self, version: int) -> IPNetwork | None:
        return next((net for net in self.pod_cidrs if net.version == version), None)


class PeerRoute(NamedTuple):
    """A route to a peer's pod CIDR (a tuple: thousands are made per sync)."""

    dst: IPNetwork
    gateway: IPAddress
    oif: int
    onlink: bool


@dataclass(frozen=True)
class Skipped:
    """A peer's pod CIDR of one family that is not reached, and why."""

    peer: str
    version: int
    reason: str


@dataclass
class Desired:
    """What the kernel should hold for the peers."""

    routes: dict[IPNetwork, PeerRoute] = field(default_factory=dict)
    neighbours: dict[int, dict[IPAddress, str]] = field(default_factory=dict)  # vxlan ifindex
    fdb: dict[int, dict[str, IPAddress]] = field(default_factory=dict)  # vxlan ifindex
    skipped: list[Skipped] = field(default_factory=list)
    # Whose each entry is (a pod CIDR, a VTEP IP or a VTEP MAC -> the peer's name): a refused
    # request is then reported against the peer it was for.
    owners: dict[IPNetwork | IPAddress | str, str] = field(default_factory=dict)

    def paths(self) -> dict[str, set[str]]:
        """The peers reached, by path: {"direct": names, "vxlan": names}."""
        out: dict[str, set[str]] = {"direct": set(), "vxlan": set()}
        for dst, route in self.routes.items():
            out["vxlan" if route.onlink else "direct"].add(self.owners[dst])
        return out


class _Taken:
    """Disjoint networks of one family, each with its holder (a node name, or None for this
    node): which one a network overlaps, in O(log n)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._held: list[tuple[str | None, IPNetwork]] = []

    @staticmethod
    def _bounds(net: IPNetwork) -> tuple[int, int]:
        start = int(net.network_address)
        return start, start | (1 << (net.max_prefixlen - net.prefixlen)) - 1

    def overlap(self, net: IPNetwork) -> tuple[str | None, IPNetwork] | None:
        start, end = self._bounds(net)
        i = bisect.bisect_right(self._starts, start)
        if i and self._ends[i - 1] >= start:
            return self._held[i - 1]
        if i < len(self._starts) and self._starts[i] <= end:
            return self._held[i]
        return None

    def add(self, net: IPNetwork, holder: str | None) -> None:
        start, end = self._bounds(net)
        i = bisect.bisect_right(self._starts, start)
        self._starts.insert(i, start)
        self._ends.insert(i, end)
        self._held.insert(i, (holder, net))


def plan(local: LocalNode, peers: list[Peer], mode: Mode, devices: dict[int, int]) -> Desired:
    """The desired state for ``peers`` (in name order, so a conflict always drops the same
    one); ``devices``: the vxlan device's ifindex per IP version, where there is one."""
    desired = Desired()
    taken = {v: _Taken() for v in VERSIONS}
    macs: dict[int, dict[str, str]] = {v: {vtep_mac(local.name, v): local.name} for v in VERSIONS}
    for net in local.pod_cidrs:
        taken[net.version].add(net, None)
    for peer in sorted(peers, key=lambda p: p.name):
        if peer.name == local.name:
            continue
        for v in VERSIONS:
            reason = _place(desired, local, peer, v, mode, devices, taken[v], macs[v])
            if reason:
                desired.skipped.append(Skipped(peer.name, v, reason))
    return desired


def _place(
    desired: Desired,
    local: LocalNode,
    peer: Peer,
    v: int,
    mode: Mode,
    devices: dict[int, int],
    taken: _Taken,
    macs: dict[str, str],
) -> str:
    """Add ``peer``'s IPv``v`` entries to ``desired``; why not, or "" when done (or none)."""
    pod = peer.pod_cidr(v)
    if pod is None:
        return ""
    underlay, node_ip = local.underlay(v), peer.node_ip(v)
    if underlay is None:
        return f"this node has no IPv{v} node address"
    if node_ip is None:
        return f"no IPv{v} node address"
    if node_ip == underlay.ip:
        return f"node IP {node_ip} is this node's"
    held = taken.overlap(pod)
    if held is not None:
        holder, other = held
        owner = f"node {holder}'s" if holder is not None else "this node's"
        return f"pod CIDR {pod} overlaps {owner} {other}"
    direct = underlay.on_link(node_ip)
    if mode is Mode.ROUTES or (mode is Mode.AUTO and direct):
        if not direct:
            nets = ", ".join(map(str, underlay.subnets)) or "none"
            return f"node IP {node_ip} is not one hop away ({underlay.name}: {nets})"
        route = PeerRoute(pod, node_ip, underlay.index, onlink=False)
    else:
        dev = devices.get(v)
        if dev is None:
            return f"no IPv{v} vxlan device"
        mac = peer.vtep_mac(v)
        if mac in macs:
            return f"VTEP MAC {mac} is also {macs[mac]}'s"
        macs[mac] = peer.name
        vtep = pod.network_address
        desired.neighbours.setdefault(dev, {})[vtep] = mac
        desired.fdb.setdefault(dev, {})[mac] = node_ip
        desired.owners[vtep] = desired.owners[mac] = peer.name
        route = PeerRoute(pod, vtep, dev, onlink=True)
    taken.add(pod, peer.name)
    desired.routes[pod] = route
    desired.owners[pod] = peer.name
    return ""
