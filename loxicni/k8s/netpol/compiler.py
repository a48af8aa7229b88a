"""The cluster as policy sees it (Pods, Namespaces, NetworkPolicies), compiled incrementally
into the node's filter program (``loxicni.net.policy_table.Program``). Pure: no API, no kernel.

Every distinct selector a policy uses, for its targets or its peers, is a *peer key* (which
namespaces, which pods) and becomes one address set per family, shared by every policy that
uses the same key; membership is kept per key and updated pod by pod, so a pod's label change
costs one match per key in use and an element change per key it enters or leaves, never a
rule. Every named port a policy uses (name, protocol) becomes one set of ``address . number``
of the pods that carry it. A policy compiles to one chain per direction and family, which
depends on the policy alone (sets are named by their key's digest), so only a policy's own
change rewrites its rules.

Only this node's pods are filtered (``Program.pods``); every pod of the cluster can be a peer.
A pod of this node is known by its Pod (``spec.nodeName``) and, before the kubelet reports its
address, by the agent's own record of its ADD (``set_local_addresses``).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from loxicni.k8s.netpol.model import PodView, Policy, Port, Rule
from loxicni.k8s.netpol.selector import Selector
from loxicni.net import policy_table as pt

# The API server labels every Namespace with its own name (Kubernetes 1.21+); a namespace we
# have not seen yet is assumed to carry just that.
NAME_LABEL = "kubernetes.io/metadata.name"

Address = IPv4Address | IPv6Address


def digest(text: str) -> str:
    """A short stable id for nft names: the same across restarts, so counters keep names."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PeerKey:
    """A set of pods: those of ``namespace`` (or of the namespaces ``namespaces`` matches)
    whose labels ``pods`` matches."""

    namespace: str | None
    namespaces: Selector | None
    pods: Selector

    @property
    def id(self) -> str:
        return digest(repr(self))


def _target_key(policy: Policy) -> PeerKey:
    return PeerKey(policy.namespace, None, policy.pod_selector)


def _peer_keys(policy: Policy) -> list[PeerKey]:
    keys = [_target_key(policy)]
    for rules in (policy.ingress, policy.egress):
        for rule in rules or ():
            for peer in rule.peers:
                if not peer.is_block:
                    keys.append(_peer_key(policy, peer.namespace_selector, peer.pod_selector))
    return keys


def _peer_key(policy: Policy, namespaces: Selector | None, pods: Selector | None) -> PeerKey:
    pods = pods or Selector()
    if namespaces is None:
        return PeerKey(policy.namespace, None, pods)
    return PeerKey(None, namespaces, pods)


def _named_ports(policy: Policy) -> list[tuple[str, str]]:
    return [
        (port.port, port.protocol)
        for rules in (policy.ingress, policy.egress)
        for rule in rules or ()
        for port in rule.ports
        if isinstance(port.port, str)
    ]


def _port_set_id(name: str, protocol: str, family: int) -> str:
    return f"{digest(name + '/' + protocol)}{family}"


def _eligible(pod: PodView) -> bool:
    # Host-network pods share the node's address: policy neither selects nor names them.
    return not pod.host_network and not pod.finished


@dataclass
class Compiler:
    node: str
    pods: dict[str, PodView] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    local_ips: dict[str, tuple[str, ...]] = field(default_factory=dict)  # uid -> addresses
    _pods_in_ns: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _policies_in_ns: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _key_refs: Counter[PeerKey] = field(default_factory=Counter)
    _members: dict[PeerKey, set[str]] = field(default_factory=dict)
    _port_refs: Counter[tuple[str, str]] = field(default_factory=Counter)
    _dirty_keys: set[PeerKey] = field(default_factory=set)
    _dirty_ports: set[tuple[str, str]] = field(default_factory=set)
    _sets: dict[str, pt.AddressSet] = field(default_factory=dict)
    _port_sets: dict[str, pt.PortSet] = field(default_factory=dict)
    _chains: dict[str, dict[str, pt.PolicyChain]] = field(default_factory=dict)  # by policy
    _addresses: dict[str, list[Address]] = field(default_factory=dict)  # cache, by uid

    # --- addresses -------------------------------------------------------------------------

    def addresses(self, uid: str) -> list[Address]:
        """The pod's addresses: its status's, and this node's ADD's for a pod of ours."""
        cached = self._addresses.get(uid)
        if cached is not None:
            return cached
        pod = self.pods.get(uid)
        if pod is None or not _eligible(pod):
            return []
        found = dict.fromkeys(pod.ips)
        found.update(dict.fromkeys(self.local_ips.get(uid, ())))
        out = self._addresses[uid] = [ip_address(a) for a in found]
        return out

    def _is_local(self, uid: str) -> bool:
        pod = self.pods.get(uid)
        return pod is not None and (pod.node == self.node or uid in self.local_ips)

    # --- membership ------------------------------------------------------------------------

    def _ns_labels(self, name: str) -> dict[str, str]:
        labels = self.namespaces.get(name)
        return labels if labels is not None else {NAME_LABEL: name}

    def _matches(self, key: PeerKey, pod: PodView) -> bool:
        if not _eligible(pod):
            return False
        if key.namespace is not None:
            if pod.namespace != key.namespace:
                return False
        elif key.namespaces is None or not key.namespaces.matches(self._ns_labels(pod.namespace)):
            return False
        return key.pods.matches(pod.label_map)

    def _recheck(self, uid: str, old: PodView | None, addresses_moved: bool) -> None:
        """Re-derive ``uid``'s membership in every key and named port set."""
        new = self.pods.get(uid)
        for key in self._key_refs:
            members = self._members[key]
            was = uid in members
            now = new is not None and self._matches(key, new)
            if now:
                members.add(uid)
            else:
                members.discard(uid)
            if was != now or (now and addresses_moved):
                self._dirty_keys.add(key)
        before = {(n, p) for n, p, _ in old.ports} if old is not None else set()
        after = {(n, p) for n, p, _ in new.ports} if new is not None else set()
        moved = old is None or new is None or old.ports != new.ports or addresses_moved
        for port in self._port_refs:
            if (port in before or port in after) and moved:
                self._dirty_ports.add(port)

    # --- events ----------------------------------------------------------------------------

    def set_pod(self, pod: PodView) -> bool:
        """A Pod as the API shows it now; True if anything changed for policy."""
        old = self.pods.get(pod.uid)
        if old == pod:
            return False
        before = self.addresses(pod.uid)
        self.pods[pod.uid] = pod
        self._addresses.pop(pod.uid, None)
        if old is not None and old.namespace != pod.namespace:
            self._pods_in_ns[old.namespace].discard(pod.uid)
        self._pods_in_ns[pod.namespace].add(pod.uid)
        self._recheck(pod.uid, old, before != self.addresses(pod.uid))
        return True

    def remove_pod(self, uid: str) -> bool:
        old = self.pods.pop(uid, None)
        if old is None:
            return False
        self._addresses.pop(uid, None)
        self._pods_in_ns[old.namespace].discard(uid)
        self._recheck(uid, old, True)
        return True

    def set_local_addresses(self, uid: str, ips: tuple[str, ...]) -> bool:
        """The addresses this node's ADD gave pod ``uid`` (empty after its DEL)."""
        if self.local_ips.get(uid, ()) == ips:
            return False
        before = self.addresses(uid)
        if ips:
            self.local_ips[uid] = ips
        else:
            self.local_ips.pop(uid, None)
        self._addresses.pop(uid, None)
        pod = self.pods.get(uid)
        if pod is not None and before != self.addresses(uid):
            self._recheck(uid, pod, True)
        return True

    def set_namespace(self, name: str, labels: dict[str, str]) -> bool:
        if self.namespaces.get(name) == labels:
            return False
        self.namespaces[name] = labels
        self._namespace_moved(name)
        return True

    def remove_namespace(self, name: str) -> bool:
        if self.namespaces.pop(name, None) is None:
            return False
        self._namespace_moved(name)
        return True

    def _namespace_moved(self, name: str) -> None:
        for key in self._key_refs:
            if key.namespaces is None:
                continue
            members = self._members[key]
            for uid in self._pods_in_ns.get(name, ()):
                was, now = uid in members, self._matches(key, self.pods[uid])
                if was != now:
                    (members.add if now else members.discard)(uid)
                    self._dirty_keys.add(key)

    def set_policy(self, policy: Policy) -> bool:
        old = self.policies.get(policy.ref)
        if old == policy:
            return False
        if old is not None:
            self._release(old)
        self.policies[policy.ref] = policy
        self._policies_in_ns[policy.namespace].add(policy.ref)
        self._acquire(policy)
        self._chains[policy.ref] = self._compile(policy)
        return True

    def remove_policy(self, ref: str) -> bool:
        old = self.policies.pop(ref, None)
        if old is None:
            return False
        self._policies_in_ns[old.namespace].discard(ref)
        self._release(old)
        del self._chains[ref]
        return True

    def _acquire(self, policy: Policy) -> None:
        for key in _peer_keys(policy):
            if self._key_refs[key] == 0:
                self._members[key] = {
                    uid for uid, pod in self.pods.items() if self._matches(key, pod)
                }
                self._dirty_keys.add(key)
            self._key_refs[key] += 1
        for port in _named_ports(policy):
            if self._port_refs[port] == 0:
                self._dirty_ports.add(port)
            self._port_refs[port] += 1

    def _release(self, policy: Policy) -> None:
        for key in _peer_keys(policy):
            self._key_refs[key] -= 1
            if self._key_refs[key] == 0:
                del self._key_refs[key]
                del self._members[key]
                self._dirty_keys.add(key)
        for port in _named_ports(policy):
            self._port_refs[port] -= 1
            if self._port_refs[port] == 0:
                del self._port_refs[port]
                self._dirty_ports.add(port)

    # --- compiling -------------------------------------------------------------------------

    def _ports(self, ports: tuple[Port, ...], family: int) -> tuple[pt.Port, ...]:
        out: list[pt.Port] = []
        for port in ports:
            proto = port.protocol.lower()
            if isinstance(port.port, str):
                out.append(pt.NamedPorts(proto, _port_set_id(port.port, port.protocol, family)))
            elif port.port is None:
                out.append(pt.PortRange(proto))
            else:
                out.append(pt.PortRange(proto, port.port, port.end_port or port.port))
        return tuple(out)

    def _allows(self, policy: Policy, rules: tuple[Rule, ...], family: int) -> list[pt.Allow]:
        allows: list[pt.Allow] = []
        for rule in rules:
            ports = self._ports(rule.ports, family)
            if not rule.peers:
                allows.append(pt.Allow(pt.ANYONE, ports))
            for peer in rule.peers:
                if peer.is_block:
                    if ip_network(peer.cidr).version != family:
                        continue
                    excepts = tuple(e for e in peer.excepts if ip_network(e).version == family)
                    allows.append(pt.Allow(pt.Peer(cidr=peer.cidr, excepts=excepts), ports))
                else:
                    key = _peer_key(policy, peer.namespace_selector, peer.pod_selector)
                    allows.append(pt.Allow(pt.Peer(address_set=f"{key.id}{family}"), ports))
        return allows

    def _compile(self, policy: Policy) -> dict[str, pt.PolicyChain]:
        pid = digest(policy.ref)
        group = digest(policy.namespace)
        target = _target_key(policy).id
        out: dict[str, pt.PolicyChain] = {}
        for direction, rules in ((pt.INGRESS, policy.ingress), (pt.EGRESS, policy.egress)):
            if rules is None:
                continue
            for family in (4, 6):
                out[f"{pid}_{direction[0]}{family}"] = pt.PolicyChain(
                    direction=direction,
                    family=family,
                    group=group,
                    targets=f"{target}{family}",
                    allows=tuple(dict.fromkeys(self._allows(policy, rules, family))),
                    comment=f"{policy.ref} {direction} IPv{family}",
                )
        return out

    def _rebuild_sets(self) -> None:
        for key in self._dirty_keys:
            ids = {4: f"{key.id}4", 6: f"{key.id}6"}
            if key not in self._key_refs:
                for sid in ids.values():
                    self._sets.pop(sid, None)
                continue
            addrs = [a for uid in self._members[key] for a in self.addresses(uid)]
            for family, sid in ids.items():
                members = frozenset(a for a in addrs if a.version == family)
                old = self._sets.get(sid)
                if old is None or old.members != members:
                    self._sets[sid] = pt.AddressSet(family, members)
        self._dirty_keys.clear()
        for name, protocol in self._dirty_ports:
            ids = {f: _port_set_id(name, protocol, f) for f in (4, 6)}
            if (name, protocol) not in self._port_refs:
                for sid in ids.values():
                    self._port_sets.pop(sid, None)
                continue
            pairs = [
                (addr, number)
                for uid, pod in self.pods.items()
                for n, p, number in pod.ports
                if (n, p) == (name, protocol)
                for addr in self.addresses(uid)
            ]
            for family, sid in ids.items():
                pair_members = frozenset(x for x in pairs if x[0].version == family)
                old_set = self._port_sets.get(sid)
                if old_set is None or old_set.members != pair_members:
                    self._port_sets[sid] = pt.PortSet(family, pair_members)
        self._dirty_ports.clear()

    def selected_by(self, uid: str) -> tuple[list[str], list[str]]:
        """The policies (namespace/name) that select pod ``uid``: (for ingress, for egress)."""
        pod = self.pods.get(uid)
        ingress: list[str] = []
        egress: list[str] = []
        if pod is None:
            return ingress, egress
        for ref in sorted(self._policies_in_ns.get(pod.namespace, ())):
            policy = self.policies[ref]
            if uid in self._members.get(_target_key(policy), ()):
                if policy.ingress is not None:
                    ingress.append(policy.name)
                if policy.egress is not None:
                    egress.append(policy.name)
        return ingress, egress

    def local_pods(self) -> list[str]:
        return [uid for uid in self.pods if self._is_local(uid)]

    def program(self) -> pt.Program:
        """The filter program for the current state; unchanged sets are the same objects as
        in the previous program, so the table's update is a small diff."""
        self._rebuild_sets()
        policies = {cid: c for chains in self._chains.values() for cid, c in chains.items()}
        pods: dict[Address, pt.PodFilter] = {}
        for uid in self.local_pods():
            pod = self.pods[uid]
            ingress, egress = self.selected_by(uid)
            for addr in self.addresses(uid):
                pods[addr] = pt.PodFilter(
                    digest(pod.namespace), bool(ingress), bool(egress), pod.ref
                )
        return pt.Program(dict(self._sets), dict(self._port_sets), policies, pods)

    def counter_labels(self) -> dict[str, tuple[str, str, str]]:
        """Counter name -> (namespace, policy or pod name, direction), for the metrics."""
        out: dict[str, tuple[str, str, str]] = {}
        for ref, chains in self._chains.items():
            namespace, name = ref.split("/", 1)
            for cid, chain in chains.items():
                out[pt.allow_counter(cid)] = (namespace, name, chain.direction)
        for uid in self.local_pods():
            pod = self.pods[uid]
            for addr in self.addresses(uid):
                for direction in (pt.INGRESS, pt.EGRESS):
                    out[pt.drop_counter(addr, direction)] = (pod.namespace, pod.name, direction)
        return out
