"""The NodeNetwork of a node: what its agent made of the cross-node overlay, for ``kubectl``.

One per node, cluster-scoped and named after the node, owned by its Node (so it goes with
it), written by that node's agent alone. ``spec`` is what the node is in the overlay (mode,
pod CIDRs, node IPs, pod MTU, VTEPs); ``status`` is how the last sync went (peers programmed
by path, the peers left out or refused and why, the last sync's time, and a Ready
condition). Pure functions, no API calls.

A list of every peer would make each NodeNetwork grow with the cluster (a thousand nodes,
a thousand entries, in every one of a thousand objects): ``status`` counts the peers and
lists only those with a problem, at most MAX_PROBLEMS of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from loxicni.k8s.group import API_VERSION, NODE_LABEL, node_label

KIND = "NodeNetwork"
PLURAL = "nodenetworks"
MAX_PROBLEMS = 20
MAX_MESSAGE = 1024

READY = "Ready"
# Reasons of the Ready condition.
SYNCED = "Synced"  # every peer of the cluster programmed
PEERS_SKIPPED = "PeersSkipped"  # some peer cannot be reached as the mode asks
SYNC_FAILED = "SyncFailed"  # the kernel refused entries, or the overlay cannot be set up
NO_NODE_IP = "NoNodeIP"  # the Node has no InternalIP this node holds or can route from
NO_POD_CIDR = "NoPodCIDR"


@dataclass(frozen=True)
class Vtep:
    """A vxlan device of the node: what peers encapsulate to."""

    family: str  # "IPv4" / "IPv6": the underlay's
    device: str
    mac: str
    vni: int
    port: int
    address: str  # the VTEP IP (the pod CIDR's network address)
    local: str  # the node IP the encapsulated packets leave from
    underlay: str  # the interface holding it


@dataclass(frozen=True)
class Problem:
    peer: str
    message: str


@dataclass
class NodeNetworkState:
    """What the body is made of."""

    node: str
    node_uid: str
    mode: str
    pod_cidrs: list[str]
    node_ips: list[str]
    pod_mtu: int | None = None
    vteps: list[Vtep] = field(default_factory=list)
    peers_known: int = 0
    direct: int = 0
    vxlan: int = 0
    problems: list[Problem] = field(default_factory=list)
    last_sync: str = ""  # RFC 3339
    ready: bool = False
    reason: str = ""
    message: str = ""
    transition: str = ""  # RFC 3339: when ``ready`` last changed

    @property
    def programmed(self) -> int:
        return self.direct + self.vxlan


def body(state: NodeNetworkState) -> dict[str, Any]:
    """The NodeNetwork for a server-side apply."""
    spec: dict[str, Any] = {
        "nodeName": state.node,
        "mode": state.mode,
        "podCIDRs": list(state.pod_cidrs),
        "nodeIPs": list(state.node_ips),
    }
    if state.pod_mtu is not None:
        spec["podMTU"] = state.pod_mtu
    if state.vteps:
        spec["vteps"] = [asdict(v) for v in state.vteps]
    status: dict[str, Any] = {
        "peers": {
            "known": state.peers_known,
            "programmed": state.programmed,
            "direct": state.direct,
            "vxlan": state.vxlan,
            "withProblems": len({p.peer for p in state.problems}),
        },
        "problems": [
            {"peer": p.peer, "message": p.message[:MAX_MESSAGE]}
            for p in state.problems[:MAX_PROBLEMS]
        ],
        "conditions": [
            {
                "type": READY,
                "status": "True" if state.ready else "False",
                "reason": state.reason,
                "message": state.message[:MAX_MESSAGE],
                "lastTransitionTime": state.transition,
            }
        ],
    }
    if state.last_sync:
        status["lastSyncTime"] = state.last_sync
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": state.node,
            "labels": {NODE_LABEL: node_label(state.node)},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": state.node,
                    "uid": state.node_uid,
                    # GC'd with the Node; no blockOwnerDeletion (it would need nodes/finalizers).
                    "controller": False,
                }
            ],
        },
        "spec": spec,
        "status": status,
    }


def fingerprint(obj: dict[str, Any]) -> str:
    """What we own of a NodeNetwork, comparable between ours and the API's; the last sync's
    time is left out (it moves at every sync, and alone is no reason to write)."""
    meta = obj.get("metadata") or {}
    owners = [o.get("uid") for o in meta.get("ownerReferences") or []]
    status = dict(obj.get("status") or {})
    status.pop("lastSyncTime", None)
    return json.dumps([obj.get("spec"), status, owners], sort_keys=True, default=str)
