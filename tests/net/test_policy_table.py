"""The network policy table against the real kernel: a node (a netns with a bridge) and three
pods (netns on veths, IPv4 and IPv6), nft run inside the node's netns. What the table holds is
read back with ``nft -j``; what it means is checked with real TCP, UDP and SCTP traffic.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest

from loxicni.net import policy_table as pt
from loxicni.net.policy_table import (
    ANYONE,
    EGRESS,
    INGRESS,
    AddressSet,
    Allow,
    NamedPorts,
    Peer,
    PodFilter,
    PolicyChain,
    PolicyTable,
    PortRange,
    PortSet,
    Program,
)
from tests.support.host import unrouted
from tests.support.probes import Probe, Servers, run_probes

PORTS = (80, 81, 8080)


@dataclass
class Pod:
    ns: str
    v4: IPv4Address
    v6: IPv6Address

    def ip(self, family: int) -> IPv4Address | IPv6Address:
        return self.v4 if family == 4 else self.v6


@dataclass
class Node:
    ns: str
    pods: dict[str, Pod]
    table: PolicyTable
    servers: Servers

    def nft_json(self) -> list[dict[str, Any]]:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "-j", "list", "table", "inet", pt.TABLE],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if proc.returncode != 0:
            return []
        objs: list[dict[str, Any]] = json.loads(proc.stdout)["nftables"]
        return objs

    def reach(self, pairs: list[tuple[str, str, int, str]], family: int = 4) -> set[str]:
        """Which of (src, dst, port, protocol) get through, as 'src>dst:proto/port'."""
        probes = {
            Probe(self.pods[s].ns, self.pods[d].ns, str(self.pods[d].ip(family)), port, proto): (
                f"{s}>{d}:{proto}/{port}"
            )
            for s, d, port, proto in pairs
        }
        got = run_probes(probes, self.servers, timeout=0.6)
        return {name for p, name in probes.items() if got[p]}


def _ip(ns: str, script: str) -> None:
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=script.encode(), check=True, timeout=30)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    net4 = unrouted(ipaddress.IPv4Network(f"10.78.{x}.0/24") for x in range(10, 250))
    assert net4 is not None
    net6 = ipaddress.IPv6Network(f"fd78:{net4.network_address.packed[2]:x}::/64")
    tag = uuid.uuid4().hex[:6]
    host = f"lxp-{tag}-node"
    made = [host]
    servers = Servers()
    try:
        subprocess.run(["ip", "netns", "add", host], check=True)
        _ip(host, f"link set lo up\nlink add br0 type bridge\naddr add {net4[1]}/24 dev br0\n"
                  f"addr add {net6[1]}/64 dev br0 nodad\nlink set br0 up\n")  # fmt: skip
        pods = {}
        for i, name in enumerate("abc", start=2):
            ns = f"lxp-{tag}-{name}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            _ip(host, f"link add v{name} type veth peer name eth0 netns {ns}\n"
                      f"link set v{name} master br0 up\n")  # fmt: skip
            _ip(ns, f"link set lo up\nlink set eth0 up\naddr add {net4[i]}/24 dev eth0\n"
                    f"addr add {net6[i]}/64 dev eth0 nodad\n"
                    f"route add default via {net4[1]}\n"
                    f"route add default via {net6[1]}\n")  # fmt: skip
            pods[name] = Pod(ns, IPv4Address(net4[i]), IPv6Address(net6[i]))
        endpoints = [
            (p.ns, str(ip), port, proto)
            for p in pods.values()
            for ip in (p.v4, p.v6)
            for port in PORTS
            for proto in ("tcp", "udp", "sctp")
        ]
        servers.listen(endpoints)
        table = PolicyTable(prefix=("ip", "netns", "exec", host))
        yield Node(host, pods, table, servers)
    finally:
        servers.close()
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def fresh(node: Node) -> Iterator[Node]:
    try:
        yield node
    finally:
        node.table.delete()


def pair_all(
    names: str = "abc", ports: tuple[int, ...] = (80,), protos: str = "tcp"
) -> list[tuple[str, str, int, str]]:
    return [
        (s, d, port, proto)
        for s in names
        for d in names
        if s != d
        for port in ports
        for proto in protos.split(",")
    ]


def members(node: Node, *names: str, family: int = 4) -> frozenset[Any]:
    return frozenset(node.pods[n].ip(family) for n in names)


def program(node: Node, family: int = 4, **parts: Any) -> Program:
    """Pods a, b, c in group ns1, none isolated unless ``isolated={'b': 'i'|'e'|'ie'}``."""
    isolated: dict[str, str] = parts.pop("isolated", {})
    prog = Program(**parts)
    for name, pod in node.pods.items():
        how = isolated.get(name, "")
        prog.pods[pod.ip(family)] = PodFilter("ns1", "i" in how, "e" in how, f"ns1/{name}")
    return prog


def counters(node: Node) -> dict[str, int]:
    return node.table.counters()


def only_a_into_b(node: Node) -> Program:
    """b isolated for ingress, a (any port) its only peer: the program the tests change."""
    pol = PolicyChain(INGRESS, 4, "ns1", "t", (Allow(Peer(address_set="p"), ()),))
    return program(
        node,
        address_sets={
            "t": AddressSet(4, members(node, "b")),
            "p": AddressSet(4, members(node, "a")),
        },
        policies={"pol": pol},
        isolated={"b": "i"},
    )


# --- tests -----------------------------------------------------------------------------------


def test_no_policy_everything_flows(fresh: Node) -> None:
    fresh.table.replace(program(fresh))
    pairs = pair_all(protos="tcp,udp,sctp")
    assert fresh.reach(pairs) == {f"{s}>{d}:{p}/{port}" for s, d, port, p in pairs}
    objs = fresh.nft_json()
    chains = {o["chain"]["name"]: o["chain"] for o in objs if "chain" in o}
    assert chains["egress"]["hook"] == "forward" and chains["egress"]["prio"] == 0
    assert chains["ingress"]["hook"] == "forward" and chains["ingress"]["prio"] == 10
    assert {f"i_{p.v4.packed.hex()}" for p in fresh.pods.values()} <= set(chains)


def test_ingress_isolation_and_an_allow_list(fresh: Node) -> None:
    node = fresh
    b = node.pods["b"].v4
    allow_a_tcp80 = PolicyChain(
        INGRESS, 4, "ns1", "t", (Allow(Peer(address_set="a"), (PortRange("tcp", 80, 80),)),),
        "ns1/allow-a",
    )  # fmt: skip
    prog = program(
        node,
        address_sets={
            "t": AddressSet(4, members(node, "b")),
            "a": AddressSet(4, members(node, "a")),
        },
        policies={"pol1": allow_a_tcp80},
        isolated={"b": "i"},
    )
    node.table.replace(prog)
    got = node.reach(pair_all(ports=(80, 81), protos="tcp,udp,sctp"))
    into_b = {x for x in got if ">b:" in x}
    assert into_b == {"a>b:tcp/80"}
    # b itself may still talk to everyone, and the replies come back
    assert {"b>a:tcp/80", "b>c:udp/81", "b>a:sctp/80", "a>c:tcp/81", "c>a:udp/80"} <= got
    c = counters(node)
    assert c[pt.drop_counter(b, INGRESS)] > 0
    assert c[pt.allow_counter("pol1")] >= 1
    assert c[pt.drop_counter(node.pods["a"].v4, INGRESS)] == 0


def test_egress_isolation_named_ports_cidr_and_ranges(fresh: Node) -> None:
    node = fresh
    a, b, c = (node.pods[n].v4 for n in "abc")
    egress = PolicyChain(
        EGRESS, 4, "ns1", "t",
        (
            Allow(Peer(address_set="b"), (NamedPorts("tcp", "http_tcp"),)),
            Allow(Peer(cidr=f"{c}/24", excepts=(f"{b}/32",)), (PortRange("udp", 80, 81),)),
            Allow(ANYONE, (PortRange("sctp", 8080, 8080),)),
        ),
    )  # fmt: skip
    prog = program(
        node,
        address_sets={
            "t": AddressSet(4, members(node, "a")),
            "b": AddressSet(4, members(node, "b")),
        },
        port_sets={"http_tcp": PortSet(4, frozenset({(b, 8080), (c, 80)}))},
        policies={"pol2": egress},
        isolated={"a": "e"},
    )
    node.table.replace(prog)
    out_of_a = {
        x for x in node.reach(pair_all(ports=PORTS, protos="tcp,udp,sctp")) if x.startswith("a>")
    }
    assert out_of_a == {
        "a>b:tcp/8080",  # b's named port (c's own "http" is 80 but c is not a peer)
        "a>c:udp/80", "a>c:udp/81",  # the CIDR, less b
        "a>b:sctp/8080", "a>c:sctp/8080",  # anyone, on SCTP 8080
    }  # fmt: skip
    # not isolated for ingress: anyone reaches a, and a's replies pass
    assert {"b>a:tcp/80", "c>a:udp/8080", "b>a:sctp/81"} <= node.reach(
        [("b", "a", 80, "tcp"), ("c", "a", 8080, "udp"), ("b", "a", 81, "sctp")]
    )
    assert a in members(node, "a")


def test_ipv6(fresh: Node) -> None:
    node = fresh
    pol = PolicyChain(INGRESS, 6, "ns1", "t6", (Allow(Peer(address_set="c6"), ()),))
    prog = program(
        node,
        family=6,
        address_sets={
            "t6": AddressSet(6, members(node, "a", family=6)),
            "c6": AddressSet(6, members(node, "c", family=6)),
        },
        policies={"pol6": pol},
        isolated={"a": "i"},
    )
    node.table.replace(prog)
    got = node.reach(pair_all(ports=(81,), protos="tcp,udp,sctp"), family=6)
    assert {x for x in got if ">a:" in x} == {"c>a:tcp/81", "c>a:udp/81", "c>a:sctp/81"}
    assert {"b>c:tcp/81", "a>b:udp/81"} <= got  # neighbour discovery still works for a


def test_membership_and_isolation_change_only_elements(fresh: Node) -> None:
    node = fresh
    base = only_a_into_b(node)
    node.table.replace(base)
    assert node.reach([("a", "b", 80, "tcp"), ("c", "b", 80, "tcp")]) == {"a>b:tcp/80"}

    # c joins the peer selector: one element, no rule
    moved = Program(dict(base.address_sets), base.port_sets, base.policies, base.pods)
    moved.address_sets["p"] = AddressSet(4, members(node, "a", "c"))
    script = pt.render_update(base, moved)
    assert script == f"add element inet {pt.TABLE} a_p {{ {node.pods['c'].v4} }}\n"
    assert node.table.update(moved)
    assert node.reach([("a", "b", 80, "tcp"), ("c", "b", 80, "tcp")]) == {
        "a>b:tcp/80", "c>b:tcp/80"
    }  # fmt: skip

    # b stops being isolated: its map element goes, nothing else
    opened = Program(moved.address_sets, moved.port_sets, moved.policies, dict(moved.pods))
    b = node.pods["b"].v4
    opened.pods[b] = PodFilter("ns1", False, False, "ns1/b")
    assert pt.render_update(moved, opened) == f"delete element inet {pt.TABLE} ingress4 {{ {b} }}\n"
    node.table.update(opened)
    sets = {o["map"]["name"]: o["map"] for o in node.nft_json() if "map" in o}
    assert "elem" not in sets["ingress4"]
    assert node.table.update(opened) is False  # nothing to do, nothing sent


def test_policy_and_pod_come_and_go(fresh: Node) -> None:
    node = fresh
    node.table.replace(Program())
    pol = PolicyChain(INGRESS, 4, "ns2", "t", (), "ns2/deny")
    prog = program(
        node,
        address_sets={"t": AddressSet(4, members(node, "c"))},
        policies={"deny": pol},
        isolated={"c": "i"},
    )
    node.table.update(prog)
    assert node.reach([("a", "c", 80, "udp"), ("c", "a", 80, "udp")]) == {"c>a:udp/80"}
    node.table.update(Program())
    objs = node.nft_json()
    names = {o[k]["name"] for o in objs for k in ("chain", "set", "counter") if k in o}
    assert names == {"egress", "ingress"}  # everything else went with the program
    assert node.reach([("a", "c", 80, "udp")]) == {"a>c:udp/80"}


def test_update_after_the_table_vanished_rebuilds(fresh: Node) -> None:
    node = fresh
    prog = program(
        node, address_sets={"t": AddressSet(4, members(node, "a"))},
        policies={"x": PolicyChain(INGRESS, 4, "ns1", "t", ())}, isolated={"a": "i"},
    )  # fmt: skip
    node.table.replace(prog)
    rebuilds = node.table.rebuilds
    node.table.delete()
    node.table.applied = prog  # we believe it is there; the kernel says otherwise
    more = Program(prog.address_sets, prog.port_sets, prog.policies, dict(prog.pods))
    more.pods[ip_address("10.255.255.1")] = PodFilter("ns1", True, False)
    node.table.update(more)
    assert node.table.rebuilds == rebuilds + 1
    assert node.reach([("b", "a", 80, "tcp")]) == set()


def test_replace_never_opens_nor_closes(fresh: Node) -> None:
    """Rebuilding again and again while traffic flows: a denied path stays denied, an allowed
    one allowed, at every probe."""
    node = fresh
    prog = only_a_into_b(node)
    node.table.replace(prog)
    stop = threading.Event()
    rebuilds = 0

    def rebuild() -> None:
        nonlocal rebuilds
        while not stop.is_set():
            node.table.replace(prog)
            rebuilds += 1

    thread = threading.Thread(target=rebuild)
    thread.start()
    try:
        for _ in range(8):
            got = node.reach([("a", "b", 81, "tcp"), ("c", "b", 81, "tcp"), ("c", "b", 81, "udp")])
            assert got == {"a>b:tcp/81"}
    finally:
        stop.set()
        thread.join()
    assert rebuilds >= 5
