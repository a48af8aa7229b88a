"""Every Node of the cluster as the cross-node overlay needs it: name, UID, pod CIDRs and
InternalIPs, nothing else.

A Node object carries much more (conditions, capacity, images) and changes for reasons of its
own (the kubelet reports status every few minutes, labels and taints come and go). Only a
change of what is kept here changes the overlay, so the table says whether an event changed
anything: the rest cost no sync. Kept small on purpose: a thousand Nodes are a thousand of
these, not a thousand API objects.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from typing import Any

from loxicni.net.ip import IPAddress, IPNetwork
from loxicni.net.peers import Peer


def pod_cidrs_of(node: Any) -> list[str]:
    """``spec.podCIDRs`` (dual stack), else the older single ``spec.podCIDR``."""
    spec = node.spec
    if spec is None:
        return []
    if spec.podCIDRs:
        return list(spec.podCIDRs)
    return [spec.podCIDR] if spec.podCIDR else []


def internal_ips_of(node: Any) -> list[str]:
    """The Node's ``InternalIP`` addresses, in its order."""
    status = node.status
    if status is None or not status.addresses:
        return []
    return [a.address for a in status.addresses if a.type == "InternalIP" and a.address]


def _first_per_family(items: list[IPAddress] | list[IPNetwork]) -> tuple[Any, ...]:
    out: dict[int, Any] = {}
    for item in items:
        out.setdefault(item.version, item)
    return tuple(out.values())


@dataclass(frozen=True)
class NodeInfo:
    """A Node reduced to what the overlay uses; ``peer`` is it as the overlay's peer (the
    first pod CIDR and InternalIP of each family, as the kubelet and kube-proxy take them)."""

    uid: str
    peer: Peer

    @property
    def name(self) -> str:
        return self.peer.name

    @property
    def pod_cidrs(self) -> tuple[IPNetwork, ...]:
        return self.peer.pod_cidrs

    @property
    def node_ips(self) -> tuple[IPAddress, ...]:
        return self.peer.node_ips


def node_info(node: Any) -> NodeInfo | None:
    """The NodeInfo of a lightkube Node; None for an object without a name. Addresses that do
    not parse are left out (the API validates them; this is only belt and braces)."""
    meta = node.metadata
    if meta is None or not meta.name:
        return None
    cidrs: list[IPNetwork] = []
    for text in pod_cidrs_of(node):
        try:
            cidrs.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    ips: list[IPAddress] = []
    for text in internal_ips_of(node):
        try:
            ips.append(ipaddress.ip_address(text))
        except ValueError:
            continue
    peer = Peer(name=meta.name, node_ips=_first_per_family(ips), pod_cidrs=_first_per_family(cidrs))
    return NodeInfo(uid=meta.uid or "", peer=peer)


class NodeTable:
    """Nodes by name. ``listed`` once a full list has arrived: before that an absent Node
    means nothing, and no overlay entry may be taken away for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, NodeInfo] = {}
        self.listed = False

    def replace(self, nodes: list[NodeInfo]) -> bool:
        """The whole table (after a list); True if anything differs from before."""
        fresh = {n.name: n for n in nodes}
        with self._lock:
            changed = not self.listed or fresh != self._by_name
            self._by_name = fresh
            self.listed = True
            return changed

    def put(self, node: NodeInfo) -> bool:
        """Store ``node``; True if it is new or differs in what the overlay uses."""
        with self._lock:
            changed = self._by_name.get(node.name) != node
            self._by_name[node.name] = node
            return changed

    def remove(self, name: str) -> bool:
        with self._lock:
            return self._by_name.pop(name, None) is not None

    def get(self, name: str) -> NodeInfo | None:
        with self._lock:
            return self._by_name.get(name)

    def snapshot(self) -> list[NodeInfo]:
        with self._lock:
            return list(self._by_name.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_name)
