"""A seeded corpus of NetworkPolicy cases: policies and the probes that check them.

The cluster is fixed (`cluster()`): three namespaces of three pods each, on two nodes, with
varied labels (a key missing here and there, an empty value) and the same six server ports on
every pod, TCP 80, 81 and 8080, UDP 53 and 80, SCTP 9000, but named differently per pod kind
("http" is 80 on some pods and 8080 on others), plus addresses outside the cluster for ipBlock.
The addresses are parameters: the real cluster's pods get theirs from IPAM.

`generate(cluster)` gives the cases: a systematic part, one or a few cases per field of the
API (policyTypes given, mixed and defaulted; every selector operator; peers by pod, by
namespace, both, ipBlock with except in both families; numbered, named and ranged ports on
every protocol; empty rules; deny-all; stacked policies), then seeded random stacks of one
to three policies drawn from the same pieces. Every policy is one the API server accepts (the
oracle validates them with the API server's own code). The probes of a case are all pod pairs
(each pod to itself too) on TCP 80, plus for every other port the case's policies make
relevant a sample of sources per destination; addresses outside the cluster as sources (and
as egress destinations when the case has egress rules); IPv6 when the case has an ipBlock.

Nothing here knows the answers: `tests/netpol/oracle.py` gives them.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .oracle import (
    ClusterSpec,
    ContainerPort,
    Endpoint,
    External,
    Family,
    Namespace,
    Pod,
    PodRef,
    Probe,
    Protocol,
)

SEED = 20261201
RANDOM_CASES = 170

# Every pod serves all of these; a probe port is one of them.
PROBE_PORTS: tuple[tuple[int, Protocol], ...] = (
    (80, "TCP"),
    (81, "TCP"),
    (8080, "TCP"),
    (53, "UDP"),
    (80, "UDP"),
    (9000, "SCTP"),
)
PRIMARY_PORT: tuple[int, Protocol] = (80, "TCP")

_CP = ContainerPort
# The names differ per kind of pod: a named port in a policy means a different number, or
# nothing, depending on the destination.
PORTS_BY_KIND: dict[str, tuple[ContainerPort, ...]] = {
    "web": (_CP(80, "TCP", "http"), _CP(81, "TCP"), _CP(8080, "TCP", "admin"),
            _CP(53, "UDP", "dns"), _CP(80, "UDP"), _CP(9000, "SCTP", "sctp")),
    "api": (_CP(80, "TCP", "admin"), _CP(81, "TCP"), _CP(8080, "TCP", "http"),
            _CP(53, "UDP", "dns"), _CP(80, "UDP"), _CP(9000, "SCTP", "sctp")),
    "db": (_CP(80, "TCP", "http"), _CP(81, "TCP"), _CP(8080, "TCP"),
           _CP(53, "UDP"), _CP(80, "UDP", "admin"), _CP(9000, "SCTP")),
}  # fmt: skip

NAMESPACES = (
    Namespace("x", {"team": "red", "env": "prod"}),
    Namespace("y", {"team": "blue", "env": "prod"}),
    Namespace("z", {"team": "red"}),
)

# (namespace, name, labels, kind, node)
LAYOUT: tuple[tuple[str, str, dict[str, str], str, str], ...] = (
    ("x", "a", {"app": "web", "tier": "frontend"}, "web", "node-1"),
    ("x", "b", {"app": "api", "tier": "backend", "canary": ""}, "api", "node-1"),
    ("x", "c", {"app": "db"}, "db", "node-2"),
    ("y", "a", {"app": "web", "tier": "frontend"}, "web", "node-2"),
    ("y", "b", {"app": "api", "tier": "backend"}, "api", "node-1"),
    ("y", "c", {"tier": "backend", "canary": "true"}, "api", "node-2"),
    ("z", "a", {"app": "web"}, "web", "node-1"),
    ("z", "b", {"app": "api", "tier": "frontend"}, "api", "node-2"),
    ("z", "c", {}, "web", "node-1"),
)

# Outside the cluster: two in one /24 (one side of an except each), one elsewhere; two IPv6.
EXTERNALS = ("192.0.2.10", "192.0.2.20", "198.51.100.7", "2001:db8::10", "2001:db8::20")

# The label values selectors draw from ("other" is on no object).
POD_LABELS: dict[str, tuple[str, ...]] = {
    "app": ("web", "api", "db", "other"),
    "tier": ("frontend", "backend"),
    "canary": ("", "true"),
}
NAMESPACE_LABELS: dict[str, tuple[str, ...]] = {
    "team": ("red", "blue"),
    "env": ("prod", "other"),
    "kubernetes.io/metadata.name": ("x", "y", "z"),
}


def _default_ips() -> dict[str, tuple[str, ...]]:
    ips: dict[str, tuple[str, ...]] = {}
    for i, (ns, name, _, _, node) in enumerate(LAYOUT, start=10):
        n = node.removeprefix("node-")
        ips[f"{ns}/{name}"] = (f"10.244.{n}.{i}", f"fd00:10:244:{n}::{i:x}")
    return ips


def cluster(
    ips: Mapping[str, Sequence[str]] | None = None,
    externals: Sequence[str] = EXTERNALS,
    nodes: Mapping[str, str] | None = None,
) -> ClusterSpec:
    """The fixed cluster, with the pods' addresses ("ns/name" -> addresses; made-up ones by
    default), the outside addresses and the pods' nodes (LAYOUT's node-1/node-2 by default)."""
    addresses = ips if ips is not None else _default_ips()
    pods = tuple(
        Pod(
            namespace=ns,
            name=name,
            labels=labels,
            ips=tuple(addresses[f"{ns}/{name}"]),
            ports=PORTS_BY_KIND[kind],
            node=(nodes or {}).get(f"{ns}/{name}", node),
        )
        for ns, name, labels, kind, node in LAYOUT
    )
    return ClusterSpec(namespaces=NAMESPACES, pods=pods, externals=tuple(externals))


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[dict[str, Any], ...]
    probes: tuple[Probe, ...]


def policy(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# ---------------------------------------------------------------------------------------------
# The pieces policies are made of.


def _req(key: str, op: str, *values: str) -> dict[str, Any]:
    r: dict[str, Any] = {"key": key, "operator": op}
    if op in ("In", "NotIn"):
        r["values"] = list(values)
    return r


# Representative pod selectors: every operator, a missing key, an empty value.
POD_SELECTORS: tuple[dict[str, Any], ...] = (
    {"matchLabels": {"app": "web"}},
    {"matchLabels": {"canary": ""}},
    {"matchLabels": {"app": "api", "tier": "backend"}},
    {"matchExpressions": [_req("tier", "In", "frontend")]},
    {"matchExpressions": [_req("tier", "NotIn", "backend")]},
    {"matchExpressions": [_req("canary", "Exists")]},
    {"matchExpressions": [_req("app", "DoesNotExist")]},
    {"matchLabels": {"app": "web"}, "matchExpressions": [_req("tier", "DoesNotExist")]},
    {"matchExpressions": [_req("app", "In", "web", "api"), _req("tier", "NotIn", "frontend")]},
)
NAMESPACE_SELECTORS: tuple[dict[str, Any], ...] = (
    {"matchLabels": {"team": "red"}},
    {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
    {"matchExpressions": [_req("team", "In", "blue")]},
    {"matchExpressions": [_req("env", "NotIn", "prod")]},
    {"matchExpressions": [_req("env", "Exists")]},
    {"matchExpressions": [_req("env", "DoesNotExist")]},
    {"matchExpressions": [_req("kubernetes.io/metadata.name", "NotIn", "x")]},
)

# Port specs: numbered, defaulted protocol, named (per destination pod), protocol only,
# empty (all TCP), ranges (endPort) on every protocol.
PORT_SPECS: tuple[dict[str, Any], ...] = (
    {"port": 80, "protocol": "TCP"},
    {"port": 81},
    {"port": 8080, "protocol": "TCP"},
    {"port": 53, "protocol": "UDP"},
    {"port": 80, "protocol": "UDP"},
    {"port": 9000, "protocol": "SCTP"},
    {"port": 443, "protocol": "TCP"},
    {"port": "http"},
    {"port": "http", "protocol": "TCP"},
    {"port": "admin", "protocol": "TCP"},
    {"port": "admin", "protocol": "UDP"},
    {"port": "dns", "protocol": "UDP"},
    {"port": "dns"},
    {"port": "sctp", "protocol": "SCTP"},
    {"protocol": "UDP"},
    {"protocol": "SCTP"},
    {},
    {"port": 80, "endPort": 81, "protocol": "TCP"},
    {"port": 81, "endPort": 8080},
    {"port": 8000, "endPort": 8100, "protocol": "TCP"},
    {"port": 53, "endPort": 80, "protocol": "UDP"},
    {"port": 9000, "endPort": 9001, "protocol": "SCTP"},
    {"port": 1, "endPort": 65535, "protocol": "UDP"},
)


def _net(ip: str, prefix: int) -> str:
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _block(cidr: str, *excepts: str) -> dict[str, Any]:
    net = ipaddress.ip_network(cidr)
    for e in excepts:  # the API's rule: each except strictly inside cidr
        sub = ipaddress.ip_network(e)
        assert sub.network_address in net and sub.prefixlen > net.prefixlen, (cidr, e)
    return {"cidr": cidr, "except": list(excepts)} if excepts else {"cidr": cidr}


def ip_blocks(spec: ClusterSpec, family: Family) -> list[dict[str, Any]]:
    """ipBlocks over this cluster's addresses: one pod, a pod's /24 (/64) but that pod, a
    pod's /16 (/48) but another pod's /24 (/64), everything but a pod's /16 (/48), one outside
    address, an outside /24 (/64) but one address, everything."""
    host, sub, wide = (32, 24, 16) if family == 4 else (128, 64, 48)
    anywhere = "0.0.0.0/0" if family == 4 else "::/0"
    pod_ips = [ip for p in spec.pods if (ip := p.ip(family))]
    outside = [e for e in spec.externals if (":" in e) == (family == 6)]
    blocks: list[dict[str, Any]] = []
    if pod_ips:
        first, last = pod_ips[0], pod_ips[-1]
        blocks.append(_block(_net(first, host)))
        blocks.append(_block(_net(first, sub), _net(first, host)))
        if ipaddress.ip_address(last) in ipaddress.ip_network(_net(first, wide)):
            blocks.append(_block(_net(first, wide), _net(last, sub)))
        blocks.append(_block(anywhere, _net(first, wide)))
    if outside:
        blocks.append(_block(_net(outside[0], host)))
        blocks.append(_block(_net(outside[0], sub), _net(outside[0], host)))
    blocks.append(_block(anywhere))
    return blocks


# ---------------------------------------------------------------------------------------------
# The systematic part.


def _spec(
    pods: Mapping[str, Any] | None = None,
    types: Sequence[str] | None = None,
    *,
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    s: dict[str, Any] = {"podSelector": dict(pods or {})}
    if types is not None:
        s["policyTypes"] = list(types)
    if ingress is not None:
        s["ingress"] = ingress
    if egress is not None:
        s["egress"] = egress
    return s


def _from(
    *peers: dict[str, Any], ports: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": list(peers)} if peers else {}
    if ports is not None:
        rule["ports"] = [dict(p) for p in ports]
    return rule


def _to(*peers: dict[str, Any], ports: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": list(peers)} if peers else {}
    if ports is not None:
        rule["ports"] = [dict(p) for p in ports]
    return rule


def _peer(
    pods: Mapping[str, Any] | None = None, namespaces: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    peer: dict[str, Any] = {}
    if pods is not None:
        peer["podSelector"] = dict(pods)
    if namespaces is not None:
        peer["namespaceSelector"] = dict(namespaces)
    return peer


def _labels(**labels: str) -> dict[str, Any]:
    return {"matchLabels": labels}


def _named(namespace: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": namespace}}


INGRESS, EGRESS, BOTH = ["Ingress"], ["Egress"], ["Ingress", "Egress"]


def _systematic(spec: ClusterSpec) -> list[tuple[str, list[dict[str, Any]]]]:
    cases: list[tuple[str, list[dict[str, Any]]]] = []

    def case(name: str, *specs: tuple[str, dict[str, Any]]) -> None:
        cases.append((name, [policy(ns, f"{name}-{i}", s) for i, (ns, s) in enumerate(specs)]))

    web, red, blue = _labels(app="web"), _labels(team="red"), _labels(team="blue")
    udp53, http = {"port": 53, "protocol": "UDP"}, {"port": "http"}

    # policyTypes, deny-all, allow-all
    case("deny-ingress", ("x", _spec(types=INGRESS)))
    case("deny-ingress-defaulted", ("x", _spec()))
    case("deny-egress", ("y", _spec(types=EGRESS)))
    case("deny-both", ("z", _spec(types=BOTH)))
    case("deny-both-reversed", ("x", _spec(types=["Egress", "Ingress"])))
    case("allow-all-ingress", ("x", _spec(types=INGRESS)), ("x", _spec(ingress=[{}])))
    case("allow-all-egress", ("y", _spec(types=EGRESS)), ("y", _spec(types=EGRESS, egress=[{}])))
    case("empty-ingress-list", ("y", _spec(ingress=[])))
    # Egress rules and no policyTypes: both types, so ingress is denied too.
    case("types-defaulted-both", ("x", _spec(web, egress=[_to(ports=[udp53])])))
    # Rules of a direction policyTypes leaves out mean nothing.
    case(
        "ingress-rules-ignored",
        ("y", _spec(types=EGRESS, ingress=[{}], egress=[_to(_peer(pods={}))])),
    )
    case(
        "egress-rules-ignored",
        ("z", _spec(types=INGRESS, egress=[{}], ingress=[_from(_peer(namespaces=red))])),
    )

    # spec.podSelector: which pods a policy isolates
    for i, sel in enumerate(POD_SELECTORS):
        case(f"target-selector-{i}", ("x", _spec(sel, BOTH)))
    # peers by pod, by namespace, both in one peer (AND), in two (OR)
    for i, sel in enumerate(POD_SELECTORS):
        case(f"from-pods-{i}", ("y", _spec(ingress=[_from(_peer(pods=sel))])))
    for i, sel in enumerate(NAMESPACE_SELECTORS):
        case(f"from-namespaces-{i}", ("x", _spec(ingress=[_from(_peer(namespaces=sel))])))
    for i, sel in enumerate(NAMESPACE_SELECTORS[:4]):
        case(f"to-namespaces-{i}", ("z", _spec(types=EGRESS, egress=[_to(_peer(namespaces=sel))])))
    case(
        "from-all-namespaces",
        ("x", _spec(_labels(app="db"), ingress=[_from(_peer(namespaces={}))])),
    )
    case("from-own-namespace", ("y", _spec(ingress=[_from(_peer(pods={}))])))
    case("from-pods-and-namespaces", ("y", _spec(ingress=[_from(_peer(web, red))])))
    case(
        "from-pods-or-namespaces", ("y", _spec(ingress=[_from(_peer(web), _peer(namespaces=red))]))
    )
    case("from-pods-any-namespace", ("z", _spec(ingress=[_from(_peer(web, {}))])))

    # ipBlock, both families, both directions
    families: tuple[Family, ...] = (4, 6)
    for family in families:
        for i, block in enumerate(ip_blocks(spec, family)):
            peer = {"ipBlock": block}
            case(f"from-ipblock-v{family}-{i}", ("x", _spec(ingress=[_from(peer)])))
            case(f"to-ipblock-v{family}-{i}", ("y", _spec(types=EGRESS, egress=[_to(peer)])))

    # ports: every spec on ingress; the named and ranged ones on egress too (a named port is
    # the destination pod's)
    for i, port in enumerate(PORT_SPECS):
        case(f"ingress-port-{i}", ("z", _spec(ingress=[_from(ports=[port])])))
        if "endPort" in port or isinstance(port.get("port"), str):
            case(f"egress-port-{i}", ("x", _spec(types=EGRESS, egress=[_to(ports=[port])])))
    several: list[dict[str, Any]] = [
        {"port": 81},
        {"port": "dns", "protocol": "UDP"},
        {"port": 9000, "protocol": "SCTP"},
    ]
    case("ingress-ports-several", ("y", _spec(ingress=[_from(ports=several)])))
    case(
        "ingress-ports-per-peer",
        ("x", _spec(ingress=[_from(_peer(web), ports=[http]),
                             _from(_peer(namespaces=red), ports=[udp53])])),
    )  # fmt: skip

    # The documentation's patterns: default-deny egress, then DNS anywhere in the cluster;
    # the example policy of the NetworkPolicy concept page, on this cluster's addresses.
    case(
        "egress-dns-only",
        ("y", _spec(types=EGRESS)),
        ("y", _spec(types=EGRESS, egress=[_to(_peer(namespaces={}), ports=[udp53])])),
    )
    outside = [e for e in spec.externals if ":" not in e]
    pod_ip = spec.pods[0].ip(4)
    if outside and pod_ip:
        docs_from = {"ipBlock": _block(_net(outside[0], 24), _net(outside[0], 32))}
        docs_to = {"ipBlock": _block(_net(pod_ip, 24))}
        ingress = _from(docs_from, _peer(namespaces=blue), _peer(_labels(tier="frontend")),
                        ports=[{"protocol": "TCP", "port": 80}])  # fmt: skip
        egress = _to(docs_to, ports=[{"protocol": "TCP", "port": 8080}])
        case(
            "docs-example",
            ("x", _spec(_labels(app="db"), BOTH, ingress=[ingress], egress=[egress])),
        )

    # Policies add up.
    case(
        "stacked-same-pods",  # both select x/a: either one's rules admit
        ("x", _spec(web, ingress=[_from(_peer(namespaces=_named("y")), ports=[{"port": 80}])])),
        ("x", _spec(_labels(tier="frontend"),
                    ingress=[_from(_peer(namespaces=_named("z")), ports=[{"port": 81}])])),
    )  # fmt: skip
    case(
        "stacked-deny-and-allows",
        ("y", _spec(types=INGRESS)),
        ("y", _spec(ingress=[_from(_peer(pods={}))])),
        ("y", _spec(_labels(app="api"), ingress=[_from(_peer(namespaces=red), ports=[http])])),
    )
    # Both ends must allow: the client's egress denies what the server's ingress allows.
    case("client-denies-server-allows", ("x", _spec(types=EGRESS)), ("y", _spec(ingress=[{}])))
    case(
        "ingress-and-egress-apart",
        ("x", _spec(web, INGRESS, ingress=[_from(_peer(pods={}))])),
        ("x", _spec(web, EGRESS, egress=[_to(_peer(namespaces=red))])),
    )
    has_app = {"matchExpressions": [_req("app", "Exists")]}
    case(
        "across-namespaces",
        ("x", _spec(types=EGRESS, egress=[_to(_peer(namespaces=blue))])),
        ("y", _spec(_labels(tier="backend"), ingress=[_from(_peer(has_app, red))])),
        ("z", _spec(types=BOTH, ingress=[_from({"ipBlock": ip_blocks(spec, 4)[-1]})])),
    )
    return cases


# ---------------------------------------------------------------------------------------------
# The random part.


def _random_selector(rng: random.Random, space: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    keys = sorted(space)
    kind = rng.choices(("empty", "labels", "expressions", "both"), (2, 4, 4, 2))[0]
    sel: dict[str, Any] = {}
    if kind in ("labels", "both"):
        sel["matchLabels"] = {k: rng.choice(space[k]) for k in rng.sample(keys, rng.randint(1, 2))}
    if kind in ("expressions", "both"):
        reqs = []
        for k in rng.sample(keys, rng.randint(1, 2)):
            op = rng.choice(("In", "NotIn", "Exists", "DoesNotExist"))
            values = rng.sample(list(space[k]), rng.randint(1, min(2, len(space[k]))))
            reqs.append(_req(k, op, *values))
        sel["matchExpressions"] = reqs
    return sel


def _random_peers(rng: random.Random, spec: ClusterSpec) -> list[dict[str, Any]]:
    peers = []
    for _ in range(rng.randint(1, 2)):
        kind = rng.choices(("pods", "namespaces", "both", "ipblock"), (4, 3, 3, 2))[0]
        peer: dict[str, Any] = {}
        if kind in ("pods", "both"):
            peer["podSelector"] = _random_selector(rng, POD_LABELS)
        if kind in ("namespaces", "both"):
            peer["namespaceSelector"] = _random_selector(rng, NAMESPACE_LABELS)
        if kind == "ipblock":
            family: Family = rng.choice((4, 4, 6))
            peer["ipBlock"] = rng.choice(ip_blocks(spec, family))
        peers.append(peer)
    return peers


def _random_rule(rng: random.Random, spec: ClusterSpec, peer_key: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    peers = rng.choices(("omitted", "empty", "some"), (2, 1, 6))[0]
    if peers == "empty":
        rule[peer_key] = []
    elif peers == "some":
        rule[peer_key] = _random_peers(rng, spec)
    if rng.random() < 0.6:
        rule["ports"] = [dict(p) for p in rng.sample(PORT_SPECS, rng.randint(1, 2))]
    return rule


def _random_policy(rng: random.Random, spec: ClusterSpec, name: str) -> dict[str, Any]:
    body: dict[str, Any] = {"podSelector": _random_selector(rng, POD_LABELS)}
    types = rng.choice((None, None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]))
    if types is not None:
        body["policyTypes"] = types
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        n = rng.choices((-1, 0, 1, 2), (2, 1, 4, 2))[0]  # -1: key omitted
        if n >= 0:
            body[direction] = [_random_rule(rng, spec, peer_key) for _ in range(n)]
    namespace = rng.choice(spec.namespaces).name
    return policy(namespace, name, body)


# ---------------------------------------------------------------------------------------------
# Probes.


def _port_specs(policies: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    specs: list[Mapping[str, Any]] = []
    for p in policies:
        for direction in ("ingress", "egress"):
            for rule in p["spec"].get(direction) or ():
                specs.extend(rule.get("ports") or ())
    return specs


def relevant_ports(
    spec: ClusterSpec, policies: Sequence[Mapping[str, Any]]
) -> set[tuple[int, Protocol]]:
    """Probe ports the policies' port specs can match on some pod, with, for each protocol
    they name, one that none matches (a boundary), and the same number on the other of TCP
    and UDP (a rule must not leak across protocols)."""
    matched: set[tuple[int, Protocol]] = set()
    protocols: set[str] = set()
    for ps in _port_specs(policies):
        proto = ps.get("protocol", "TCP")
        protocols.add(proto)
        for number, p in PROBE_PORTS:
            if p != proto:
                continue
            port = ps.get("port")
            if port is None:
                hit = True
            elif isinstance(port, str):
                hit = any(cp.name == port and cp.protocol == p and cp.port == number
                          for pod in spec.pods for cp in pod.ports)  # fmt: skip
            else:
                hit = port <= number <= ps.get("endPort", port)
            if hit:
                matched.add((number, p))
    ports = set(matched)
    for proto in sorted(protocols):
        unmatched = [pp for pp in PROBE_PORTS if pp[1] == proto and pp not in matched]
        ports.update(unmatched[:1])
    for number, proto in matched:
        twin: tuple[int, Protocol] = (number, "UDP" if proto == "TCP" else "TCP")
        if twin in PROBE_PORTS:
            ports.add(twin)
    return ports


def _has(policies: Sequence[Mapping[str, Any]], key: str, value: str | None = None) -> bool:
    def walk(o: Any) -> bool:
        if isinstance(o, dict):
            return any(
                (k == key and (value is None or value in str(v))) or walk(v) for k, v in o.items()
            )
        if isinstance(o, list):
            return any(walk(v) for v in o)
        return False

    return walk([p["spec"] for p in policies])


def _has_egress(policies: Sequence[Mapping[str, Any]]) -> bool:
    for p in policies:
        s = p["spec"]
        if "Egress" in s.get("policyTypes", ()) or ("policyTypes" not in s and s.get("egress")):
            return True
    return False


def probes_for(
    spec: ClusterSpec, policies: Sequence[Mapping[str, Any]], rng: random.Random
) -> tuple[Probe, ...]:
    """Every pod pair (a pod to itself too) on TCP 80, with every outside address to every pod
    (and every pod to them when there are egress rules); on up to three of the ports the
    policies make relevant (`relevant_ports`) plus one more, each pod from itself and two
    other pods, and a few outside addresses; IPv6 on TCP 80 when an ipBlock is in play (all
    pairs for an IPv6 ipBlock, a sample otherwise)."""
    others = [pp for pp in PROBE_PORTS if pp != PRIMARY_PORT]
    relevant = sorted(relevant_ports(spec, policies) - {PRIMARY_PORT}, key=PROBE_PORTS.index)
    extra = rng.sample(relevant, min(3, len(relevant)))
    extra.append(rng.choice([pp for pp in others if pp not in extra]))
    ports = [PRIMARY_PORT, *sorted(extra, key=PROBE_PORTS.index)]
    egress = _has_egress(policies)
    pods = [PodRef(p.namespace, p.name) for p in spec.pods]
    probes: list[Probe] = []

    def add(family: Family, ports: Sequence[tuple[int, Protocol]], all_pairs: bool) -> None:
        outside = [External(e) for e in spec.externals if (":" in e) == (family == 6)]
        for number, proto in ports:
            pairs: list[tuple[Endpoint, Endpoint]]
            if (number, proto) == PRIMARY_PORT and all_pairs:
                pairs = [(s, d) for d in pods for s in pods]
                pairs += [(e, d) for d in pods for e in outside]
                if egress:
                    pairs += [(s, e) for s in pods for e in outside]
            else:
                pairs = []
                for d in pods:
                    pairs += [(s, d) for s in [d, *rng.sample([p for p in pods if p != d], 2)]]
                if outside:
                    pairs += [(rng.choice(outside), d) for d in rng.sample(pods, 3)]
                    if egress:
                        pairs += [(s, rng.choice(outside)) for s in rng.sample(pods, 3)]
            probes.extend(Probe(s, d, number, proto, family) for s, d in pairs)

    add(4, ports, all_pairs=True)
    if all(p.ip(6) for p in spec.pods):
        if _has(policies, "cidr", ":"):
            add(6, [PRIMARY_PORT], all_pairs=True)
        elif _has(policies, "ipBlock"):
            add(6, [PRIMARY_PORT], all_pairs=False)
    return tuple(probes)


# ---------------------------------------------------------------------------------------------


def generate(spec: ClusterSpec, seed: int = SEED, random_cases: int = RANDOM_CASES) -> list[Case]:
    """The corpus for this cluster: the same seed and cluster give the same cases."""
    rng = random.Random(seed)
    named = _systematic(spec)
    for i in range(random_cases):
        name = f"random-{i:03d}"
        size = rng.choices((1, 2, 3), (3, 4, 2))[0]
        stack = [_random_policy(rng, spec, f"{name}-{j}") for j in range(size)]
        if rng.random() < 0.15:
            stack.append(policy(rng.choice(spec.namespaces).name, f"{name}-deny", _spec()))
        named.append((name, stack))
    return [Case(name, tuple(ps), probes_for(spec, ps, rng)) for name, ps in named]


def features(policies: Sequence[Mapping[str, Any]]) -> set[str]:
    """What parts of the API a case exercises (for the coverage test and the report)."""
    tags: set[str] = set()
    if len(policies) > 1:
        tags.add("stacked")

    def selector(prefix: str, sel: Mapping[str, Any] | None) -> None:
        if sel is None:
            return
        if not sel.get("matchLabels") and not sel.get("matchExpressions"):
            tags.add(f"{prefix}:empty")
        if sel.get("matchLabels"):
            tags.add(f"{prefix}:matchLabels")
        for r in sel.get("matchExpressions") or ():
            tags.add(f"{prefix}:{r['operator']}")

    for p in policies:
        s = p["spec"]
        types = s.get("policyTypes")
        if types is None:
            types = BOTH if s.get("egress") else INGRESS
            tags.add("policyTypes:defaulted-" + "+".join(types))
        else:
            tags.add("policyTypes:" + "+".join(sorted(types)))
            if "ingress" in s and "Ingress" not in types:
                tags.add("policyTypes:ingress-rules-ignored")
            if "egress" in s and "Egress" not in types:
                tags.add("policyTypes:egress-rules-ignored")
        selector("podSelector", s.get("podSelector"))
        for direction in ("Ingress", "Egress"):
            if direction in types and not s.get(direction.lower()):
                tags.add(f"{direction.lower()}:deny-all")
        for direction, peer_key in (("ingress", "from"), ("egress", "to")):
            rules = s.get(direction)
            if rules is not None and not rules:
                tags.add(f"{direction}:no-rules")
            for rule in rules or ():
                if not rule:
                    tags.add(f"{direction}:empty-rule")
                if not rule.get(peer_key):
                    tags.add(f"{direction}:all-peers")
                for peer in rule.get(peer_key) or ():
                    selector("peer.podSelector", peer.get("podSelector"))
                    selector("peer.namespaceSelector", peer.get("namespaceSelector"))
                    if "podSelector" in peer and "namespaceSelector" in peer:
                        tags.add("peer:pods-and-namespaces")
                    if block := peer.get("ipBlock"):
                        v = "v6" if ":" in block["cidr"] else "v4"
                        tags.add(f"{direction}:ipBlock-{v}")
                        if block.get("except"):
                            tags.add(f"{direction}:ipBlock-except-{v}")
                for port in rule.get("ports") or ():
                    tags.add("port:protocol-" + port.get("protocol", "defaulted"))
                    if "endPort" in port:
                        tags.add("port:endPort")
                    elif isinstance(port.get("port"), str):
                        tags.add("port:named")
                    elif "port" in port:
                        tags.add("port:numbered")
                    else:
                        tags.add("port:any")
    return tags
