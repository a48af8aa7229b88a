"""The overlay on a simulated cluster (tests/net/overlay_cluster.py): three nodes, two on one
subnet and one behind a router, each programmed by ``loxicni.net.overlay.sync`` through a
netlink socket bound to its namespace, from this one process.

Checked in every mode: the kernel state read back through pyroute2, pod-to-pod pings across
nodes in both families, and what a second sync sends (nothing). Then reconciliation: a peer
removed, a route deleted by hand, a foreign route, a peer's change, a restart, a mode switch,
and a teardown that leaves nothing of ours (and everything of anyone else's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute

from loxicni.net import overlay, vxlan
from loxicni.net.overlay import OverlayConfig, SyncReport
from loxicni.net.peers import Mode, Peer
from tests.net.overlay_cluster import (
    Cluster,
    Node,
    path_mtu_signals,
    ping_all,
    set_pod_mtu,
    transfer,
)

PROTO = overlay.RTPROT_LOXI
VXLAN = OverlayConfig(mode=Mode.VXLAN)
AUTO = OverlayConfig(mode=Mode.AUTO)
ROUTES = OverlayConfig(mode=Mode.ROUTES)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    try:
        made.build()
        # the pods' MTU is the overlay's: what vxlan leaves of the underlay, both families
        mtus = {overlay.pod_mtu(node.local(), VXLAN) for node in made.nodes}
        assert mtus == {1430}
        made.add_pods(1430)
        yield made
    finally:
        made.destroy()


@pytest.fixture
def nodes(cluster: Cluster) -> Iterator[list[Node]]:
    """The cluster's nodes, with nothing of the overlay's left after each test."""
    try:
        yield cluster.nodes
    finally:
        for node in cluster.nodes:
            overlay.teardown(node.rt, VXLAN)
            node.rt.reset()


def _sync(node: Node, peers: list[Peer], config: OverlayConfig) -> SyncReport:
    return overlay.sync(node.rt, node.local(), peers, config)


def _sync_all(nodes: list[Node], config: OverlayConfig) -> dict[str, SyncReport]:
    peers = [n.peer for n in nodes]
    reports = {node.name: _sync(node, peers, config) for node in nodes}
    for name, report in reports.items():
        assert report.ok, (name, report.failures)
    return reports


def _routes(node: Node, proto: int | None = PROTO) -> dict[str, Any]:
    """Main-table routes of both families by destination, read by pyroute2."""
    out: dict[str, Any] = {}
    with node.pyr() as ipr:
        for family in (2, 10):
            for m in ipr.get_routes(family=family, table=254):
                if proto is None or m["proto"] == proto:
                    out[f"{m.get('RTA_DST')}/{m['dst_len']}"] = m
    return out


def _index(node: Node, name: str) -> int | None:
    with node.pyr() as ipr:
        found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _neighbours(node: Node, dev: int) -> dict[str, str]:
    with node.pyr() as ipr:
        return {
            m.get("NDA_DST"): m.get("NDA_LLADDR")
            for family in (2, 10)
            for m in ipr.get_neighbours(family=family, ifindex=dev)
            if m["state"] & 0x80  # permanent
        }


def _fdb(node: Node, dev: int) -> dict[str, str]:
    with node.pyr() as ipr:
        return {
            m.get("NDA_LLADDR"): m.get("NDA_DST")
            for m in ipr.fdb("dump", ifindex=dev)
            if m["ifindex"] == dev
        }


def _assert_reachability(nodes: list[Node], reachable: set[tuple[int, int]]) -> None:
    """Every pod pings every pod of ``reachable`` (pairs of node numbers), both families."""
    pairs = [
        (a.pod_ns, ip)
        for a in nodes
        for b in nodes
        if (a.index, b.index) in reachable
        for ip in b.pod_ips
    ]
    results = ping_all(pairs)
    assert [key for key, ok in results.items() if not ok] == []


ALL_PAIRS = {(a, b) for a in (1, 2, 3) for b in (1, 2, 3) if a != b}


def _assert_nothing_of_ours(node: Node) -> None:
    assert _routes(node) == {}
    assert _index(node, VXLAN.device4) is None and _index(node, VXLAN.device6) is None


def _assert_vxlan_state(node: Node, others: list[Node], direct: set[str]) -> None:
    """``node``'s kernel: a route per other node and family (direct to the ``direct`` ones,
    through vxlan to the rest), and for the latter a neighbour and an FDB entry."""
    dev4, dev6 = _index(node, VXLAN.device4), _index(node, VXLAN.device6)
    assert dev4 is not None and dev6 is not None
    routes = _routes(node)
    want_neigh: dict[str, str] = {}
    want_fdb4: dict[str, str] = {}
    want_fdb6: dict[str, str] = {}
    for other in others:
        n = other.index
        for dst, gw_direct, vtep, dev, version in (
            (f"10.244.{n}.0/24", str(other.ipv4), f"10.244.{n}.0", dev4, 4),
            (f"fd00:244:{n}::/64", str(other.ipv6), f"fd00:244:{n}::", dev6, 6),
        ):
            route = routes.pop(dst)
            if other.name in direct:
                assert route.get("RTA_GATEWAY") == gw_direct
                assert route.get("RTA_OIF") == _index(node, "eth0")
                assert not route["flags"] & 4
            else:
                assert route.get("RTA_GATEWAY") == vtep and route.get("RTA_OIF") == dev
                assert route["flags"] & 4  # onlink
                mac = vxlan.vtep_mac(other.name, version)
                want_neigh[vtep] = mac
                (want_fdb4 if version == 4 else want_fdb6)[mac] = gw_direct
    assert routes == {}  # nothing else of ours
    assert _neighbours(node, dev4) | _neighbours(node, dev6) == want_neigh
    assert _fdb(node, dev4) == want_fdb4 and _fdb(node, dev6) == want_fdb6


def _assert_devices(node: Node) -> None:
    """The node's vxlan devices as the scheme says: VNI, port, local, learning off, MTU, MAC,
    VTEP address."""
    with node.pyr() as ipr:
        for version, name, local, mtu in (
            (4, VXLAN.device4, str(node.ipv4), 1450),
            (6, VXLAN.device6, str(node.ipv6), 1430),
        ):
            (msg,) = ipr.link("get", ifname=name)
            data = msg.get(("IFLA_LINKINFO", "IFLA_INFO_DATA"))
            assert data.get("IFLA_VXLAN_ID") == 1 and data.get("IFLA_VXLAN_PORT") == 8472
            key = "IFLA_VXLAN_LOCAL" if version == 4 else "IFLA_VXLAN_LOCAL6"
            assert data.get(key) == local and data.get("IFLA_VXLAN_LEARNING") == 0
            assert data.get("IFLA_VXLAN_LINK") == _index(node, "eth0")
            assert msg.get("IFLA_MTU") == mtu and msg["flags"] & 1
            assert msg.get("IFLA_ADDRESS") == vxlan.vtep_mac(node.name, version)
            addrs = {
                (m.get("IFA_ADDRESS"), m["prefixlen"])
                for m in ipr.get_addr(index=msg["index"])
                if not m.get("IFA_ADDRESS").startswith("fe80")
            }
            vtep = f"10.244.{node.index}.0" if version == 4 else f"fd00:244:{node.index}::"
            assert addrs == {(vtep, 32 if version == 4 else 128)}


def test_vxlan(nodes: list[Node]) -> None:
    reports = _sync_all(nodes, VXLAN)
    for node in nodes:
        report = reports[node.name]
        assert report.skipped == [] and set(report.devices.values()) == {"created"}
        # per other node and family: a neighbour, an FDB entry and a route
        assert report.changes == {"neigh set": 4, "fdb set": 4, "route add": 4}
        _assert_devices(node)
        _assert_vxlan_state(node, [o for o in nodes if o is not node], direct=set())
    _assert_reachability(nodes, ALL_PAIRS)
    # 1 MB each way through the router and two vxlan devices, at the pods' MTU: nothing
    # too big for the vxlan device, so no path MTU discovery needed (no ICMP to lose)
    n1, _, n3 = nodes
    with n1.pyr() as ipr, IPRoute(netns=n1.pod_ns) as pod:
        (veth,) = ipr.link("get", ifname="veth1")
        (eth0,) = pod.link("get", ifname="eth0")
    assert veth.get("IFLA_MTU") == eth0.get("IFLA_MTU") == 1430
    before = {node.name: path_mtu_signals(node.ns) for node in nodes}
    transfer(n1, n3, 4)
    transfer(n3, n1, 6)
    assert {node.name: path_mtu_signals(node.ns) for node in nodes} == before
    # the control: pods at the underlay's MTU (both ends, or TCP's MSS would take the
    # smaller) make their node drop and signal
    try:
        set_pod_mtu(n1, 1500)
        set_pod_mtu(n3, 1500)
        transfer(n1, n3, 4)
        transfer(n1, n3, 6)
    finally:
        set_pod_mtu(n1, 1430)
        set_pod_mtu(n3, 1430)
    after = path_mtu_signals(n1.ns)
    assert after["Ip FragFails"] > before["node1"]["Ip FragFails"]
    assert after["Icmp6OutPktTooBigs"] > before["node1"]["Icmp6OutPktTooBigs"]
    # nothing changed: the second sync changes nothing, and says so by its own count
    for node in nodes:
        node.rt.reset()
        report = _sync(node, [n.peer for n in nodes], VXLAN)
        assert node.rt.modifying == 0 and report.requests == 0 and report.changes == {}
        assert report.devices == {}


def test_routes(nodes: list[Node]) -> None:
    peers = [n.peer for n in nodes]
    reports = {node.name: _sync(node, peers, ROUTES) for node in nodes}
    n1, n2, _ = nodes
    for node, other in ((n1, n2), (n2, n1)):
        report = reports[node.name]
        assert report.ok and report.changes == {"route add": 2}
        # node3 is behind the router: not reachable by a direct route, left out and said so
        assert {(s.peer, s.version) for s in report.skipped} == {("node3", 4), ("node3", 6)}
        routes = _routes(node)
        assert set(routes) == {f"10.244.{other.index}.0/24", f"fd00:244:{other.index}::/64"}
        assert routes[f"10.244.{other.index}.0/24"].get("RTA_GATEWAY") == str(other.ipv4)
        assert routes[f"fd00:244:{other.index}::/64"].get("RTA_GATEWAY") == str(other.ipv6)
        assert _index(node, VXLAN.device4) is None  # no vxlan in this mode
    assert reports["node3"].changes == {} and len(reports["node3"].skipped) == 4
    _assert_reachability(nodes, {(1, 2), (2, 1)})
    for node in nodes:
        node.rt.reset()
        assert _sync(node, peers, ROUTES).requests == 0 and node.rt.modifying == 0


def test_auto(nodes: list[Node]) -> None:
    reports = _sync_all(nodes, AUTO)
    n1, n2, n3 = nodes
    # node1 and node2 share a subnet: a direct route between them, vxlan to and from node3
    assert reports["node1"].changes == {"route add": 4, "neigh set": 2, "fdb set": 2}
    assert reports["node3"].changes == {"route add": 4, "neigh set": 4, "fdb set": 4}
    assert reports["node1"].paths == {"direct": {"node2"}, "vxlan": {"node3"}}
    assert reports["node3"].paths == {"direct": set(), "vxlan": {"node1", "node2"}}
    _assert_vxlan_state(n1, [n2, n3], direct={"node2"})
    _assert_vxlan_state(n2, [n1, n3], direct={"node1"})
    _assert_vxlan_state(n3, [n1, n2], direct=set())
    _assert_reachability(nodes, ALL_PAIRS)
    transfer(n2, n3, 6)
    transfer(n2, n1, 4)  # direct
    for node in nodes:
        node.rt.reset()
        assert _sync(node, [n.peer for n in nodes], AUTO).requests == 0
        assert node.rt.modifying == 0


def test_reconcile(nodes: list[Node]) -> None:
    n1, n2, n3 = nodes
    everyone = [n.peer for n in nodes]
    _sync_all(nodes, VXLAN)
    dev4 = _index(n1, VXLAN.device4)
    assert dev4 is not None

    # a foreign route in the same table, and one in the way of a peer's pod CIDR
    with n1.pyr() as ipr:
        ipr.route("add", dst="10.99.0.0/16", gateway="192.168.50.254", proto=4)
        ipr.route("del", dst="10.244.2.0/24", proto=PROTO)
        ipr.route("add", dst="10.244.2.0/24", gateway="192.168.50.2", proto=4)
    n1.rt.reset()
    report = _sync(n1, everyone, VXLAN)
    assert report.requests == 1 and report.changes == {}  # tried the add once, refused
    assert report.failures == [
        f"route 10.244.2.0/24 via 10.244.2.0 dev {dev4} onlink: "
        "a route of another protocol is in the way"
    ]
    assert report.peer_failures == {"node2": report.failures}  # whose entry was refused
    foreign = _routes(n1, proto=4)
    assert foreign["10.244.2.0/24"].get("RTA_GATEWAY") == "192.168.50.2"  # untouched
    assert "10.99.0.0/16" in foreign
    # once it is gone, ours comes back: one request
    with n1.pyr() as ipr:
        ipr.route("del", dst="10.244.2.0/24", proto=4)
    n1.rt.reset()
    report = _sync(n1, everyone, VXLAN)
    assert report.ok and report.changes == {"route add": 1} and n1.rt.modifying == 1

    # a route of ours deleted by hand is back on the next sync, and only it is sent
    with n1.pyr() as ipr:
        ipr.route("del", dst="fd00:244:3::/64", proto=PROTO)
    n1.rt.reset()
    assert _sync(n1, everyone, VXLAN).changes == {"route add": 1} and n1.rt.modifying == 1
    _assert_vxlan_state(n1, [n2, n3], direct=set())
    # ... and so are a neighbour and an FDB entry
    with n1.pyr() as ipr:
        ipr.neigh("del", dst="10.244.3.0", ifindex=dev4)
        ipr.fdb("del", ifindex=dev4, lladdr=vxlan.vtep_mac("node3", 4))
    n1.rt.reset()
    assert _sync(n1, everyone, VXLAN).changes == {"neigh set": 1, "fdb set": 1}
    assert n1.rt.modifying == 2
    # a route with our mark that we would not make (an extra metric) goes
    with n1.pyr() as ipr:
        ipr.route("add", dst="10.244.3.0/24", gateway="192.168.50.254", priority=77, proto=PROTO)
    n1.rt.reset()
    assert _sync(n1, everyone, VXLAN).changes == {"route del": 1}
    _assert_vxlan_state(n1, [n2, n3], direct=set())

    # a peer changes (its VTEP MAC): a neighbour, an FDB entry in and one out, nothing else
    moved = Peer(n3.name, n3.peer.node_ips, n3.peer.pod_cidrs, vtep_mac4="02:00:00:00:00:33")
    n1.rt.reset()
    report = _sync(n1, [n1.peer, n2.peer, moved], VXLAN)
    assert report.changes == {"neigh set": 1, "fdb set": 1, "fdb del": 1}
    assert n1.rt.modifying == 3
    assert _neighbours(n1, dev4)["10.244.3.0"] == "02:00:00:00:00:33"
    assert _fdb(n1, dev4)["02:00:00:00:00:33"] == str(n3.ipv4)

    # a peer removed loses its route, neighbour and FDB entry per family, nothing else
    n1.rt.reset()
    report = _sync(n1, [n1.peer, n2.peer], VXLAN)
    assert report.changes == {"route del": 2, "neigh del": 2, "fdb del": 2}
    assert n1.rt.modifying == 6
    _assert_vxlan_state(n1, [n2], direct=set())

    # a restart (a new socket, the same kernel): devices kept, nothing sent
    before = (_index(n1, VXLAN.device4), _index(n1, VXLAN.device6))
    n1.rt.close()
    from loxicni.net import netns
    from tests.support.counting_rtnl import CountingRtnl

    n1.rt = CountingRtnl(netns.netlink_socket_in(n1.fd))
    report = _sync(n1, [n1.peer, n2.peer], VXLAN)
    assert report.requests == 0 and report.devices == {} and n1.rt.modifying == 0
    assert (_index(n1, VXLAN.device4), _index(n1, VXLAN.device6)) == before

    # mode switch: vxlan -> auto -> routes, each the difference only
    n1.rt.reset()
    report = _sync(n1, everyone, AUTO)
    assert report.changes == {
        "route replace": 2,  # node2 now direct
        "route add": 2,  # node3 back, through vxlan
        "neigh set": 2,
        "fdb set": 2,
        "neigh del": 2,  # node2's
        "fdb del": 2,
    }
    _assert_vxlan_state(n1, [n2, n3], direct={"node2"})
    report = _sync(n1, everyone, ROUTES)
    assert report.changes == {"route del": 2, "neigh del": 2, "fdb del": 2}
    assert set(_routes(n1)) == {"10.244.2.0/24", "fd00:244:2::/64"}

    # teardown: ours gone (routes, devices), the foreign route and the pods' network stay
    assert overlay.teardown(n1.rt, VXLAN).devices == [VXLAN.device4, VXLAN.device6]
    _assert_nothing_of_ours(n1)
    assert "10.99.0.0/16" in _routes(n1, proto=4)
    assert _index(n1, "cni0") is not None and _index(n1, "eth0") is not None
    assert overlay.teardown(n1.rt, VXLAN).routes == 0  # and again: nothing to do


def test_teardown_leaves_nothing(nodes: list[Node]) -> None:
    _sync_all(nodes, AUTO)
    for node in nodes:
        report = overlay.teardown(node.rt, VXLAN)
        assert report.devices == [VXLAN.device4, VXLAN.device6]
        assert report.routes == 4
        _assert_nothing_of_ours(node)
        i = node.index
        leftovers = [
            dst
            for dst in _routes(node, proto=None)
            if dst.startswith(("10.244.", "fd00:244:"))
            and not dst.startswith((f"10.244.{i}.", f"fd00:244:{i}:"))
        ]
        assert leftovers == []
