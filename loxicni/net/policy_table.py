"""NetworkPolicy's packet filter: ``table inet loxi-cni-policy``, kept by the agent.

What the kernel holds (names are the caller's ids with a prefix)::

    chain egress   forward hook, priority filter       ct established/related accept,
                                                        IPv6 neighbour discovery accept,
                                                        ip saddr vmap @egress4 (ip6: @egress6)
    chain ingress  forward hook, priority filter + 10  the same with daddr and @ingress4/6
    map egress4 / ingress4 / ...6    pod address -> goto its pod chain, only while the pod is
                                     isolated in that direction
    chain e_<addr> / i_<addr>        a pod's: its own address accept (a pod cannot block itself),
                                     jump g_<group>_e4, counter name d_e_<addr> drop
    chain g_<group>_<e|i><4|6>       a namespace's: jump p_<policy> for each of its policies
    chain p_<policy>                 one policy, one direction, one family: return unless the
                                     pod is one of its targets (@a_<targets>), then one rule per
                                     allowed peer and protocol, each ``counter name c_<policy>
                                     accept``
    set a_<id>                       addresses (of the pods a selector matches)
    set n_<id>                       address . port (pods carrying a named port, its number)

Verdicts: ``accept`` in the egress base chain ends only that chain, so an allowed packet still
meets the ingress chain of the destination; ``drop`` anywhere is final. A pod joining or
leaving a selector, or becoming isolated, changes set and map elements, never rules; a
policy's change rewrites its own chain (and its namespace's group chain when it comes or goes).

Only the forward hook is filtered: traffic between a pod and its own node (host processes,
host-network pods) never crosses it, and the API says that traffic is always allowed. Pods on
one bridge reach each other bridged, so the forward hook sees them only through br_netfilter
(``net.bridge.bridge-nf-call-iptables``/``ip6tables`` = 1, which the caller makes sure of).

Every change is one ``nft -f -`` transaction. ``replace`` builds the whole table anew and swaps
it for the old one in a single transaction (``add table; delete table; table {...}``), so a
rebuild never opens an isolated pod nor closes an open one, even for a moment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_network

from loxicni.base.logs import get_logger
from loxicni.net.nft import NO_SUCH, NftError, run, run_checked

log = get_logger(__name__)

TABLE = "loxi-cni-policy"
_T = f"inet {TABLE}"
INGRESS = "ingress"
EGRESS = "egress"
PROTOCOLS = ("tcp", "udp", "sctp")

Address = IPv4Address | IPv6Address

# Neighbour discovery must flow even to and from isolated pods: without it IPv6 stops working
# on the bridge. (ARP is not IP and never reaches these hooks.)
_ND = (
    "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
    "nd-neighbor-advert, nd-redirect } accept"
)


@dataclass(frozen=True)
class PortRange:
    """A protocol, and a range of its destination ports (``first == 0``: every port)."""

    protocol: str
    first: int = 0
    last: int = 0


@dataclass(frozen=True)
class NamedPorts:
    """A protocol and a port set: the destination must be one of its ``address . port``."""

    protocol: str
    port_set: str


Port = PortRange | NamedPorts


@dataclass(frozen=True)
class Peer:
    """The other end: the members of an address set, a CIDR less exceptions, or anyone."""

    address_set: str = ""
    cidr: str = ""
    excepts: tuple[str, ...] = ()


ANYONE = Peer()


@dataclass(frozen=True)
class Allow:
    """Traffic to or from ``peer`` on ``ports`` (empty: every protocol and port)."""

    peer: Peer
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True)
class PolicyChain:
    """One policy's rules for one direction and family."""

    direction: str
    family: int
    group: str  # its namespace's group
    targets: str  # address set of the pods it applies to
    allows: tuple[Allow, ...]
    comment: str = ""


@dataclass(frozen=True)
class PodFilter:
    """A pod address of this node: its group, and in which directions it is isolated."""

    group: str
    ingress: bool
    egress: bool
    comment: str = ""


@dataclass(frozen=True)
class AddressSet:
    family: int
    members: frozenset[Address]


@dataclass(frozen=True)
class PortSet:
    family: int
    members: frozenset[tuple[Address, int]]


@dataclass
class Program:
    """Everything the table should hold. Ids must be ``[A-Za-z0-9_]``; a caller that keeps
    unchanged parts as the same objects between programs makes ``update`` cheap."""

    address_sets: dict[str, AddressSet] = field(default_factory=dict)
    port_sets: dict[str, PortSet] = field(default_factory=dict)
    policies: dict[str, PolicyChain] = field(default_factory=dict)
    pods: dict[Address, PodFilter] = field(default_factory=dict)

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Group chain name -> the policy chains it jumps to (every group a pod or a policy
        names has its four chains, empty or not)."""
        out: dict[str, list[str]] = {}
        for group in {p.group for p in self.pods.values()} | {
            p.group for p in self.policies.values()
        }:
            for d in "ie":
                for fam in (4, 6):
                    out[f"g_{group}_{d}{fam}"] = []
        for pid in sorted(self.policies):
            chain = self.policies[pid]
            out[_group_chain(chain.group, chain.direction, chain.family)].append(pid)
        return {name: tuple(pids) for name, pids in out.items()}


# --- naming ----------------------------------------------------------------------------------


def _hex(addr: Address) -> str:
    return addr.packed.hex()


def _d(direction: str) -> str:
    return "i" if direction == INGRESS else "e"


def pod_chain(addr: Address, direction: str) -> str:
    return f"{_d(direction)}_{_hex(addr)}"


def drop_counter(addr: Address, direction: str) -> str:
    return f"d_{_d(direction)}_{_hex(addr)}"


def allow_counter(policy_id: str) -> str:
    return f"c_{policy_id}"


def _group_chain(group: str, direction: str, family: int) -> str:
    return f"g_{group}_{_d(direction)}{family}"


def _ip(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _addr_type(family: int) -> str:
    return "ipv4_addr" if family == 4 else "ipv6_addr"


def _quote(text: str) -> str:
    # nft comments are quoted strings of at most 128 bytes; a quote would end them early.
    return '"' + text.replace('"', "'")[:120] + '"'


# --- rendering -------------------------------------------------------------------------------


def _peer_match(peer: Peer, family: int, direction: str) -> str:
    ip = _ip(family)
    field_ = "saddr" if direction == INGRESS else "daddr"
    if peer.address_set:
        return f"{ip} {field_} @a_{peer.address_set} "
    if peer.cidr:
        out = f"{ip} {field_} {ip_network(peer.cidr, strict=False)} "
        if peer.excepts:
            nets = ", ".join(str(ip_network(c, strict=False)) for c in peer.excepts)
            out += f"{ip} {field_} != {{ {nets} }} "
        return out
    return ""


def _port_matches(ports: Sequence[Port], family: int) -> list[str]:
    """One match per protocol (every numbered port of it in one anonymous set), one per named
    port set; [""] when every port is allowed."""
    if not ports:
        return [""]
    out: list[str] = []
    ranges: dict[str, list[PortRange]] = {}
    for port in ports:
        if isinstance(port, NamedPorts):
            out.append(
                f"meta l4proto {port.protocol} {_ip(family)} daddr . th dport @n_{port.port_set} "
            )
        else:
            ranges.setdefault(port.protocol, []).append(port)
    for protocol in sorted(ranges):
        group = ranges[protocol]
        if any(r.first == 0 for r in group):
            out.append(f"meta l4proto {protocol} ")
            continue
        items = sorted({(r.first, max(r.last, r.first)) for r in group})
        spelled = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in items)
        out.append(f"meta l4proto {protocol} th dport {{ {spelled} }} ")
    return out


def policy_rules(pid: str, chain: PolicyChain) -> list[str]:
    ip = _ip(chain.family)
    target = "daddr" if chain.direction == INGRESS else "saddr"
    rules = [f"{ip} {target} != @a_{chain.targets} return"]
    counted = f'counter name "{allow_counter(pid)}" accept'
    for allow in chain.allows:
        peer = _peer_match(allow.peer, chain.family, chain.direction)
        for ports in _port_matches(allow.ports, chain.family):
            rules.append(f"{peer}{ports}{counted}")
    return rules


def pod_rules(addr: Address, pod: PodFilter, direction: str) -> list[str]:
    family = addr.version
    own = "saddr" if direction == INGRESS else "daddr"
    return [
        f"{_ip(family)} {own} {addr} accept",
        f"jump {_group_chain(pod.group, direction, family)}",
        f'counter name "{drop_counter(addr, direction)}" drop',
    ]


def _map(direction: str, family: int) -> str:
    return f"{direction}{family}"


def _element_lines(verb: str, set_name: str, items: Iterable[str], chunk: int = 500) -> str:
    items = list(items)
    out = []
    for i in range(0, len(items), chunk):
        out.append(f"{verb} element {_T} {set_name} {{ {', '.join(items[i : i + chunk])} }}\n")
    return "".join(out)


def _set_decl(name: str, type_: str) -> str:
    return f"add set {_T} {name} {{ type {type_}; }}\n"


def _chain_decl(name: str, comment: str = "") -> str:
    body = f" {{ comment {_quote(comment)}; }}" if comment else ""
    return f"add chain {_T} {name}{body}\n"


def _rules(name: str, rules: Iterable[str]) -> str:
    return "".join(f"add rule {_T} {name} {r}\n" for r in rules)


def _base() -> str:
    """Declarations every table has: the maps and the two base chains."""
    out = []
    for direction in (EGRESS, INGRESS):
        for family in (4, 6):
            out.append(
                f"add map {_T} {_map(direction, family)} "
                f"{{ type {_addr_type(family)} : verdict; }}\n"
            )
    for direction, prio in ((EGRESS, "filter"), (INGRESS, "filter + 10")):
        out.append(
            f"add chain {_T} {direction} {{ type filter hook forward priority {prio}; "
            "policy accept; }\n"
        )
        key = "saddr" if direction == EGRESS else "daddr"
        out.append(
            _rules(
                direction,
                [
                    "ct state established,related accept",
                    _ND,
                    f"ip {key} vmap @{_map(direction, 4)}",
                    f"ip6 {key} vmap @{_map(direction, 6)}",
                ],
            )
        )
    return "".join(out)


def _pod_element(addr: Address, direction: str) -> str:
    return f"{addr} : goto {pod_chain(addr, direction)}"


def _isolated(pod: PodFilter, direction: str) -> bool:
    return pod.ingress if direction == INGRESS else pod.egress


def render_full(program: Program) -> str:
    """The script that swaps whatever table there is for one holding ``program``."""
    out = [f"add table {_T}\ndelete table {_T}\nadd table {_T}\n", _base()]
    for name, aset in program.address_sets.items():
        out.append(_set_decl(f"a_{name}", _addr_type(aset.family)))
        out.append(_element_lines("add", f"a_{name}", map(str, aset.members)))
    for name, pset in program.port_sets.items():
        out.append(_set_decl(f"n_{name}", f"{_addr_type(pset.family)} . inet_service"))
        out.append(_element_lines("add", f"n_{name}", (f"{a} . {p}" for a, p in pset.members)))
    for pid, chain in program.policies.items():
        out.append(f"add counter {_T} {allow_counter(pid)}\n")
        out.append(_chain_decl(f"p_{pid}", chain.comment))
    groups = program.groups()
    for name in groups:
        out.append(_chain_decl(name))
    for addr, pod in program.pods.items():
        for direction in (INGRESS, EGRESS):
            out.append(f"add counter {_T} {drop_counter(addr, direction)}\n")
            out.append(_chain_decl(pod_chain(addr, direction), pod.comment))
    for pid, chain in program.policies.items():
        out.append(_rules(f"p_{pid}", policy_rules(pid, chain)))
    for name, pids in groups.items():
        out.append(_rules(name, (f"jump p_{pid}" for pid in pids)))
    for addr, pod in program.pods.items():
        for direction in (INGRESS, EGRESS):
            out.append(_rules(pod_chain(addr, direction), pod_rules(addr, pod, direction)))
            if _isolated(pod, direction):
                out.append(
                    _element_lines(
                        "add", _map(direction, addr.version), [_pod_element(addr, direction)]
                    )
                )
    return "".join(out)


def render_update(old: Program, new: Program) -> str:
    """The transaction that turns a table holding ``old`` into one holding ``new``.

    Ordered so each command finds what it refers to: declarations, then rules and elements
    that use them, and deletions last (a set or chain goes only after what referred to it).
    """
    decl: list[str] = []
    fill: list[str] = []
    unlink: list[str] = []
    drop: list[str] = []

    def diff_sets(
        prefix: str,
        olds: Mapping[str, AddressSet | PortSet],
        news: Mapping[str, AddressSet | PortSet],
    ) -> None:
        # A name keeps its family for life (the caller's ids say it), so a set is only ever
        # declared, filled, emptied or deleted, never redeclared.
        for name, s in news.items():
            was = olds.get(name)
            if was is s:
                continue
            full = f"{prefix}_{name}"
            members: frozenset[object] = s.members
            before: frozenset[object] = frozenset() if was is None else was.members
            if was is None:
                type_ = _addr_type(s.family)
                decl.append(_set_decl(full, type_ if prefix == "a" else f"{type_} . inet_service"))
            fill.append(_element_lines("add", full, map(_spell, members - before)))
            unlink.append(_element_lines("delete", full, map(_spell, before - members)))
        for name in olds.keys() - news.keys():
            drop.append(f"delete set {_T} {prefix}_{name}\n")

    diff_sets("a", old.address_sets, new.address_sets)
    diff_sets("n", old.port_sets, new.port_sets)

    chains_rules: list[str] = []
    for pid, chain in new.policies.items():
        was = old.policies.get(pid)
        if was is chain or was == chain:
            continue
        if was is None:
            decl.append(f"add counter {_T} {allow_counter(pid)}\n")
            decl.append(_chain_decl(f"p_{pid}", chain.comment))
        else:
            chains_rules.append(f"flush chain {_T} p_{pid}\n")
        chains_rules.append(_rules(f"p_{pid}", policy_rules(pid, chain)))

    old_groups, new_groups = old.groups(), new.groups()
    for name, pids in new_groups.items():
        was_pids = old_groups.get(name)
        if was_pids == pids:
            continue
        if was_pids is None:
            decl.append(_chain_decl(name))
        else:
            chains_rules.append(f"flush chain {_T} {name}\n")
        chains_rules.append(_rules(name, (f"jump p_{pid}" for pid in pids)))

    elements: list[str] = []
    for addr, pod in new.pods.items():
        was_pod = old.pods.get(addr)
        if was_pod is pod or was_pod == pod:
            continue
        for direction in (INGRESS, EGRESS):
            name = pod_chain(addr, direction)
            if was_pod is None:
                decl.append(f"add counter {_T} {drop_counter(addr, direction)}\n")
                decl.append(_chain_decl(name, pod.comment))
                chains_rules.append(_rules(name, pod_rules(addr, pod, direction)))
            elif was_pod.group != pod.group:
                chains_rules.append(f"flush chain {_T} {name}\n")
                chains_rules.append(_rules(name, pod_rules(addr, pod, direction)))
            now, before = _isolated(pod, direction), was_pod and _isolated(was_pod, direction)
            if now and not before:
                entry = _pod_element(addr, direction)
                elements.append(_element_lines("add", _map(direction, addr.version), [entry]))
            elif before and not now:
                unlink.append(_element_lines("delete", _map(direction, addr.version), [str(addr)]))

    for addr, was_pod in old.pods.items():
        if addr in new.pods:
            continue
        for direction in (INGRESS, EGRESS):
            if _isolated(was_pod, direction):
                unlink.append(_element_lines("delete", _map(direction, addr.version), [str(addr)]))
            name = pod_chain(addr, direction)
            drop.append(f"flush chain {_T} {name}\ndelete chain {_T} {name}\n")
            drop.append(f"delete counter {_T} {drop_counter(addr, direction)}\n")
    for name in old_groups.keys() - new_groups.keys():
        drop.append(f"flush chain {_T} {name}\ndelete chain {_T} {name}\n")
    for pid in old.policies.keys() - new.policies.keys():
        drop.append(f"flush chain {_T} p_{pid}\ndelete chain {_T} p_{pid}\n")
        drop.append(f"delete counter {_T} {allow_counter(pid)}\n")
    # Sets last of all: the chains that used them are gone or rewritten by now.
    drop.sort(key=lambda line: line.startswith("delete set"))
    return "".join(decl + fill + chains_rules + elements + unlink + drop)


def _spell(item: object) -> str:
    if isinstance(item, tuple):
        return f"{item[0]} . {item[1]}"
    return str(item)


# --- the table -------------------------------------------------------------------------------


class PolicyTable:
    """The kernel side: applies programs as single transactions and reads counters back.

    ``prefix`` runs nft elsewhere (``ip netns exec NAME``); the agent needs none, since it runs
    in the netns it filters. Not thread-safe: one owner applies.
    """

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        self.prefix = tuple(prefix)
        self.applied: Program | None = None
        self.transactions = 0
        self.rebuilds = 0

    def replace(self, program: Program) -> None:
        """Swap the whole table for one holding ``program`` (one transaction)."""
        self._apply(render_full(program), "cannot build the network policy table")
        self.applied = program
        self.rebuilds += 1

    def update(self, program: Program) -> bool:
        """Bring the table to ``program`` with the smallest transaction; a rebuild when we
        know of no table, or when the change fails (someone edited or deleted the table).
        True if anything was sent to the kernel."""
        if self.applied is None:
            self.replace(program)
            return True
        script = render_update(self.applied, program)
        if not script:
            self.applied = program
            return False
        try:
            self._apply(script, "cannot update the network policy table")
        except NftError as exc:
            log.warning("policy table update failed (%s); rebuilding it", exc)
            self.applied = None
            self.replace(program)
            return True
        self.applied = program
        return True

    def _apply(self, script: str, what: str) -> None:
        self.applied = None  # until nft says yes, we do not know what the kernel holds
        run_checked(["-f", "-"], script, what, self.prefix)
        self.transactions += 1

    def counters(self) -> dict[str, int]:
        """Packets counted by each named counter of the table ({} if there is none)."""
        proc = run(["-j", "list", "counters", "table", *_T.split()], None, "list", self.prefix)
        if proc.returncode != 0:
            if NO_SUCH in proc.stderr:
                return {}
            raise NftError("cannot list the policy table's counters", proc.stderr.strip())
        try:
            out: dict[str, int] = {}
            for obj in json.loads(proc.stdout)["nftables"]:
                if (c := obj.get("counter")) is not None:
                    out[str(c["name"])] = int(c["packets"])
            return out
        except (ValueError, KeyError, TypeError) as exc:
            raise NftError("cannot parse nft's listing of counters", repr(exc)) from exc

    def exists(self) -> bool:
        """Is the table there? Asked of one small map: nft lists a whole table (every set's
        elements) at a cost of seconds when sets are large, a single map in milliseconds."""
        proc = run(["list", "map", *_T.split(), _map(INGRESS, 4)], None, "list", self.prefix)
        return proc.returncode == 0

    def delete(self) -> bool:
        """Remove the table; False if there was none."""
        proc = run(["delete", "table", *_T.split()], None, "delete", self.prefix)
        self.applied = None
        if proc.returncode != 0 and NO_SUCH not in proc.stderr:
            raise NftError("cannot delete the policy table", proc.stderr.strip())
        return proc.returncode == 0
