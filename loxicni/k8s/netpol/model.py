"""``networking.k8s.io/v1`` NetworkPolicy, and the parts of Pods and Namespaces it looks at,
as typed values. Parsed from the API's JSON (dicts) or lightkube objects; pure.

Semantics kept from the API reference:
- ``policyTypes`` missing: Ingress always, Egress when the policy has egress rules (the API
  server fills this in on create; we default the same way for objects that lack it);
- a rule's missing or empty ``from``/``to`` means any peer, missing or empty ``ports`` any port;
- a peer's ``podSelector`` alone selects in the policy's namespace, ``namespaceSelector``
  alone every pod of the matching namespaces, both together the matching pods of the matching
  namespaces; ``ipBlock`` is a CIDR less its ``except`` CIDRs;
- a port without protocol is TCP; a named port is looked up on the pod at the other end of
  the rule (the selected pod for ingress, the peer for egress); ``endPort`` makes a range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from ipaddress import ip_address, ip_network
from typing import Any

from loxicni.k8s.netpol.selector import BadSelector, Selector
from loxicni.k8s.pods import mirror_of

INGRESS = "Ingress"
EGRESS = "Egress"
PROTOCOLS = ("TCP", "UDP", "SCTP")


class BadPolicy(ValueError):
    """A policy the API server should have refused."""


@dataclass(frozen=True)
class Port:
    protocol: str  # TCP | UDP | SCTP
    port: int | str | None = None  # None: every port; str: a named port
    end_port: int | None = None


@dataclass(frozen=True)
class Peer:
    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    cidr: str = ""
    excepts: tuple[str, ...] = ()

    @property
    def is_block(self) -> bool:
        return bool(self.cidr)


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()  # empty: every peer
    ports: tuple[Port, ...] = ()  # empty: every port


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: Selector
    ingress: tuple[Rule, ...] | None  # None: the policy is not of type Ingress
    egress: tuple[Rule, ...] | None
    resource_version: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def _port(obj: Mapping[str, Any]) -> Port:
    protocol = str(obj.get("protocol") or "TCP").upper()
    if protocol not in PROTOCOLS:
        raise BadPolicy(f"unknown protocol {protocol!r}")
    raw = obj.get("port")
    end = obj.get("endPort")
    port: int | str | None
    if raw is None:
        port = None
    elif isinstance(raw, int):
        port = raw
    elif isinstance(raw, str) and raw.isdigit():
        port = int(raw)
    else:
        port = str(raw)
    if end is not None and not isinstance(port, int):
        raise BadPolicy("endPort needs a numbered port")
    if isinstance(port, int) and not 1 <= port <= 65535:
        raise BadPolicy(f"port {port} out of range")
    if end is not None and not (isinstance(port, int) and port <= int(end) <= 65535):
        raise BadPolicy(f"endPort {end} below port {port} or out of range")
    return Port(protocol, port, int(end) if end is not None else None)


def _peer(obj: Mapping[str, Any]) -> Peer:
    block = obj.get("ipBlock")
    if block:
        try:
            cidr = str(ip_network(str(block["cidr"]), strict=False))
            excepts = tuple(
                str(ip_network(str(c), strict=False)) for c in block.get("except") or ()
            )
        except (KeyError, ValueError) as exc:
            raise BadPolicy(f"bad ipBlock {block!r}: {exc}") from exc
        return Peer(cidr=cidr, excepts=excepts)
    pods, namespaces = obj.get("podSelector"), obj.get("namespaceSelector")
    if pods is None and namespaces is None:
        raise BadPolicy("a peer needs podSelector, namespaceSelector or ipBlock")
    return Peer(
        pod_selector=None if pods is None else Selector.parse(pods),
        namespace_selector=None if namespaces is None else Selector.parse(namespaces),
    )


def _rules(rules: Any, key: str) -> tuple[Rule, ...]:
    out = []
    for rule in rules or ():
        peers = tuple(_peer(p) for p in rule.get(key) or ())
        ports = tuple(_port(p) for p in rule.get("ports") or ())
        out.append(Rule(peers, ports))
    return tuple(out)


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """A NetworkPolicy from its JSON form (``apiVersion``, ``metadata``, ``spec``)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    types = spec.get("policyTypes")
    if not types:
        types = [INGRESS] + ([EGRESS] if spec.get("egress") else [])
    unknown = set(types) - {INGRESS, EGRESS}
    if unknown:
        raise BadPolicy(f"unknown policyTypes {sorted(unknown)}")
    try:
        return Policy(
            namespace=str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or ""),
            pod_selector=Selector.parse(spec.get("podSelector")),
            ingress=_rules(spec.get("ingress"), "from") if INGRESS in types else None,
            egress=_rules(spec.get("egress"), "to") if EGRESS in types else None,
            resource_version=str(meta.get("resourceVersion") or ""),
        )
    except BadSelector as exc:
        raise BadPolicy(str(exc)) from exc


@dataclass(frozen=True)
class PodView:
    """What policy needs of a Pod."""

    uid: str  # as the runtime knows it: a static pod's own UID, not its mirror's
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]
    node: str
    ips: tuple[str, ...]  # status.podIPs (the agent adds its own pods' from its records)
    ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, number) of named ports
    host_network: bool = False
    finished: bool = False  # Succeeded or Failed: its address may already be someone else's

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @cached_property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def pod_view(pod: Any) -> PodView | None:
    """From a lightkube Pod; None for an object without identity."""
    meta = pod.metadata
    if meta is None or not meta.uid or not meta.name:
        return None
    spec, status = pod.spec, pod.status
    ports: list[tuple[str, str, int]] = []
    for container in (spec.containers or []) if spec is not None else []:
        for p in container.ports or []:
            if p.name:
                ports.append((str(p.name), str(p.protocol or "TCP").upper(), int(p.containerPort)))
    ips: list[str] = []
    if status is not None:
        for entry in status.podIPs or []:
            if entry.ip:
                ips.append(str(ip_address(entry.ip)))
        if not ips and status.podIP:
            ips.append(str(ip_address(status.podIP)))
    # The agent learns its pods' addresses from ADDs, under the UID the kubelet passed.
    uid = mirror_of(meta) or meta.uid
    return PodView(
        uid=str(uid),
        namespace=str(meta.namespace or "default"),
        name=str(meta.name),
        labels=tuple(sorted((meta.labels or {}).items())),
        node=str(spec.nodeName or "") if spec is not None else "",
        ips=tuple(ips),
        ports=tuple(sorted(set(ports))),
        host_network=bool(spec.hostNetwork) if spec is not None else False,
        finished=status is not None and status.phase in ("Succeeded", "Failed"),
    )


def namespace_labels(ns: Any) -> tuple[str, dict[str, str]] | None:
    """(name, labels) of a lightkube Namespace."""
    meta = ns.metadata
    if meta is None or not meta.name:
        return None
    return str(meta.name), dict(meta.labels or {})
