"""A pod's attachment as Kubernetes sees it: the PodNetworkInterface and the network-status.

Built from the agent's attachment records (``loxicni.plugin.records``), which hold everything
an ADD made: the pod's identity comes from the CNI_ARGS the runtime sent (K8S_POD_NAMESPACE,
K8S_POD_NAME, K8S_POD_UID), the interface from the ADD's result. Pure functions, no API calls.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from loxicni.cni.errors import CniError
from loxicni.cni.request import parse_cni_args
from loxicni.k8s.group import API_VERSION, NODE_LABEL, node_label
from loxicni.plugin import records
from loxicni.plugin.config import DEFAULT_BRIDGE

KIND = "PodNetworkInterface"
PLURAL = "podnetworkinterfaces"
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
# The kubelet asks for the pod's cluster network as eth0: that one is the pod's default.
DEFAULT_IFNAME = "eth0"

READY = "Ready"
ORPHANED = "Orphaned"  # the Pod is gone and the runtime never sent DEL: released after grace

_NAME_MAX = 253
_NOT_NAME = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str  # "" when the runtime sent no K8S_POD_UID


@dataclass(frozen=True)
class Attachment:
    key: str  # the record's key
    pod: PodRef
    network: str
    container_id: str
    ifname: str
    netns: str
    host_veth: str
    mac: str
    mtu: int
    ips: tuple[str, ...]  # with prefix length, as the pod holds them
    gateways: tuple[str, ...]
    bridge: str
    vlan: int

    @property
    def resource_name(self) -> str:
        """``<pod>-<ifname>-<hash>``: readable, and unique per (network, container, ifname)
        (a recreated Pod of the same name, or a second network, gets its own)."""
        ifname = _NOT_NAME.sub("-", self.ifname.lower()).strip("-") or "if"
        suffix = f"-{ifname}-{self.key[:6]}"
        return self.pod.name[: _NAME_MAX - len(suffix)].rstrip(".-") + suffix


def pod_of(cni_args: str) -> PodRef | None:
    """The Kubernetes Pod an attachment belongs to, or None (not a Kubernetes sandbox)."""
    try:
        args = dict(parse_cni_args(cni_args))
    except CniError:
        return None
    namespace, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if not namespace or not name:
        return None
    return PodRef(namespace, name, args.get("K8S_POD_UID", ""))


def from_record(record: records.Record) -> Attachment | None:
    """The attachment of a finished ADD of a Kubernetes pod; None for anything else."""
    if record.state != records.READY:
        return None
    pod = pod_of(record.cni_args)
    if pod is None:
        return None
    bridge, vlan = record.bridge, record.vlan
    if not bridge:  # a record of an older version: read what its config asked for
        raw_vlan = record.config.get("vlan") or record.config.get("vlanID")
        bridge = str(record.config.get("bridge") or DEFAULT_BRIDGE)
        vlan = raw_vlan if isinstance(raw_vlan, int) and not isinstance(raw_vlan, bool) else 0
    return Attachment(
        key=record.key,
        pod=pod,
        network=record.network,
        container_id=record.container_id,
        ifname=record.ifname,
        netns=record.netns,
        host_veth=record.host_veth,
        mac=record.mac,
        mtu=record.mtu,
        ips=tuple(record.ips),
        gateways=tuple(record.gateways),
        bridge=bridge,
        vlan=vlan,
    )


def resource_body(
    att: Attachment,
    node: str,
    uid: str,
    state: str = READY,
    policies: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    """The PodNetworkInterface of an attachment, owned by its Pod (``uid``), for an apply;
    ``policies``: the NetworkPolicies selecting the pod (for ingress, for egress)."""
    spec: dict[str, Any] = {
        "podName": att.pod.name,
        "podUID": uid,
        "node": node,
        "network": att.network,
        "containerID": att.container_id,
        "interface": att.ifname,
        "hostInterface": att.host_veth,
        "ips": list(att.ips),
        "gateways": list(att.gateways),
        "bridge": att.bridge,
        "vlan": att.vlan,
    }
    if att.mac:
        spec["mac"] = att.mac
    if att.mtu:
        spec["mtu"] = att.mtu
    status: dict[str, Any] = {"state": state}
    if policies is not None:
        status["policies"] = {"ingress": policies[0], "egress": policies[1]}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": att.resource_name,
            "namespace": att.pod.namespace,
            "labels": {NODE_LABEL: node_label(node)},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": att.pod.name,
                    "uid": uid,
                    # GC'd with the Pod; no blockOwnerDeletion (it would need pods/finalizers).
                    "controller": False,
                }
            ],
        },
        "spec": spec,
        "status": status,
    }


def network_status(atts: list[Attachment]) -> list[dict[str, Any]]:
    """The Network Plumbing WG ``network-status`` entries of a pod's attachments."""
    out: list[dict[str, Any]] = []
    for att in sorted(atts, key=lambda a: (a.ifname != DEFAULT_IFNAME, a.ifname, a.network)):
        entry: dict[str, Any] = {
            "name": att.network,
            "interface": att.ifname,
            "ips": [str(ipaddress.ip_interface(ip).ip) for ip in att.ips],
        }
        if att.mac:
            entry["mac"] = att.mac
        if att.mtu:
            entry["mtu"] = att.mtu
        entry["default"] = att.ifname == DEFAULT_IFNAME
        if att.gateways:
            entry["gateway"] = list(att.gateways)
        entry["dns"] = {}
        out.append(entry)
    return out
