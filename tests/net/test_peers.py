"""The overlay's desired state (loxicni.net.peers.plan) and the scheme nodes agree on
(VTEP MAC and address, MTU): pure functions, no kernel."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from loxicni.net import vxlan
from loxicni.net.errors import OverlayError
from loxicni.net.overlay import OverlayConfig, pod_mtu
from loxicni.net.peers import LocalNode, Mode, Peer, PeerRoute, Skipped, plan
from loxicni.net.underlay import Underlay

U4 = Underlay(ip_address("192.168.50.1"), 2, "eth0", 1500, (ip_network("192.168.50.0/24"),))
U6 = Underlay(ip_address("fd00:50::1"), 2, "eth0", 1500, (ip_network("fd00:50::/64"),))
LOCAL = LocalNode("node-1", (U4, U6), (ip_network("10.244.1.0/24"), ip_network("fd00:244:1::/64")))
DEVICES = {4: 10, 6: 11}


def _peer(n: int, subnet: int = 50, **kw: str) -> Peer:
    return Peer(
        name=f"node-{n}",
        node_ips=(ip_address(f"192.168.{subnet}.{n}"), ip_address(f"fd00:{subnet}::{n}")),
        pod_cidrs=(ip_network(f"10.244.{n}.0/24"), ip_network(f"fd00:244:{n}::/64")),
        **kw,  # type: ignore[arg-type]
    )


def test_vtep_mac_is_stable_local_unicast_and_distinct() -> None:
    mac = vxlan.vtep_mac("node-1", 4)
    assert mac == vxlan.vtep_mac("node-1", 4)  # what a restarted agent and its peers compute
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert len({vxlan.vtep_mac(f"node-{i}", v) for i in range(2000) for v in (4, 6)}) == 4000
    assert _peer(2).vtep_mac(6) == vxlan.vtep_mac("node-2", 6)
    assert _peer(2, vtep_mac4="02:AA:00:00:00:01").vtep_mac(4) == "02:aa:00:00:00:01"


def test_vtep_address_mtu() -> None:
    assert str(vxlan.vtep_address(ip_network("10.244.7.0/24"))) == "10.244.7.0/32"
    assert str(vxlan.vtep_address(ip_network("fd00:244:7::/64"))) == "fd00:244:7::/128"
    assert vxlan.device_mtu(1500, 4) == 1450 and vxlan.device_mtu(1500, 6) == 1430
    assert pod_mtu(LOCAL, OverlayConfig(mode=Mode.VXLAN)) == 1430  # both families must fit
    assert pod_mtu(LOCAL, OverlayConfig(mode=Mode.AUTO)) == 1430
    assert pod_mtu(LOCAL, OverlayConfig(mode=Mode.ROUTES)) == 1500
    v4_only = LocalNode("n", (U4,), (ip_network("10.244.1.0/24"),))
    assert pod_mtu(v4_only, OverlayConfig()) == 1450
    with pytest.raises(OverlayError):
        pod_mtu(LocalNode("n", ()), OverlayConfig())


def test_vxlan_plan() -> None:
    desired = plan(LOCAL, [_peer(2), _peer(3, subnet=60)], Mode.VXLAN, DEVICES)
    assert desired.skipped == []
    assert desired.routes[ip_network("10.244.3.0/24")] == PeerRoute(
        ip_network("10.244.3.0/24"), ip_address("10.244.3.0"), 10, onlink=True
    )
    assert desired.routes[ip_network("fd00:244:2::/64")] == PeerRoute(
        ip_network("fd00:244:2::/64"), ip_address("fd00:244:2::"), 11, onlink=True
    )
    assert desired.neighbours[10] == {
        ip_address("10.244.2.0"): vxlan.vtep_mac("node-2", 4),
        ip_address("10.244.3.0"): vxlan.vtep_mac("node-3", 4),
    }
    assert desired.fdb[11] == {
        vxlan.vtep_mac("node-2", 6): ip_address("fd00:50::2"),
        vxlan.vtep_mac("node-3", 6): ip_address("fd00:60::3"),
    }


def test_routes_plan_reaches_only_peers_one_hop_away() -> None:
    desired = plan(LOCAL, [_peer(2), _peer(3, subnet=60)], Mode.ROUTES, {})
    assert desired.routes == {
        ip_network("10.244.2.0/24"): PeerRoute(
            ip_network("10.244.2.0/24"), ip_address("192.168.50.2"), 2, onlink=False
        ),
        ip_network("fd00:244:2::/64"): PeerRoute(
            ip_network("fd00:244:2::/64"), ip_address("fd00:50::2"), 2, onlink=False
        ),
    }
    assert [(s.peer, s.version) for s in desired.skipped] == [("node-3", 4), ("node-3", 6)]
    assert "not one hop away (eth0: 192.168.50.0/24)" in desired.skipped[0].reason
    assert not desired.neighbours and not desired.fdb


def test_auto_plan_mixes() -> None:
    desired = plan(LOCAL, [_peer(2), _peer(3, subnet=60)], Mode.AUTO, DEVICES)
    assert desired.skipped == []
    assert desired.routes[ip_network("10.244.2.0/24")].gateway == ip_address("192.168.50.2")
    assert desired.routes[ip_network("10.244.3.0/24")].oif == 10
    assert desired.neighbours[10] == {ip_address("10.244.3.0"): vxlan.vtep_mac("node-3", 4)}


def test_conflicts_drop_the_later_peer_and_keep_the_rest() -> None:
    nested = Peer("node-0", (ip_address("192.168.50.9"),), (ip_network("10.244.2.128/25"),))
    mine = Peer("node-z", (ip_address("192.168.50.8"),), (ip_network("10.244.0.0/16"),))
    same_mac = _peer(4, vtep_mac6=vxlan.vtep_mac("node-2", 6))
    no_v6 = Peer("node-5", (ip_address("192.168.50.5"),), tuple(_peer(5).pod_cidrs))
    self_ip = Peer("node-6", (ip_address("192.168.50.1"),), (ip_network("10.244.6.0/24"),))
    peers = [_peer(2), nested, mine, same_mac, no_v6, self_ip, LOCAL_AS_PEER]
    desired = plan(LOCAL, peers, Mode.VXLAN, DEVICES)
    skipped = {(s.peer, s.version): s.reason for s in desired.skipped}
    # name order: node-0 takes 10.244.2.128/25 first, so node-2's IPv4 /24 overlaps it
    assert skipped[("node-2", 4)] == "pod CIDR 10.244.2.0/24 overlaps node node-0's 10.244.2.128/25"
    assert skipped[("node-z", 4)] == "pod CIDR 10.244.0.0/16 overlaps this node's 10.244.1.0/24"
    assert skipped[("node-4", 6)] == f"VTEP MAC {vxlan.vtep_mac('node-2', 6)} is also node-2's"
    assert skipped[("node-5", 6)] == "no IPv6 node address"
    assert skipped[("node-6", 4)] == "node IP 192.168.50.1 is this node's"
    assert set(skipped) == {
        ("node-2", 4),
        ("node-z", 4),
        ("node-4", 6),
        ("node-5", 6),
        ("node-6", 4),
    }
    assert ip_network("fd00:244:2::/64") in desired.routes  # the other family is unaffected
    assert ip_network("10.244.5.0/24") in desired.routes
    # no vxlan device of a family: its peers wait
    desired = plan(LOCAL, [_peer(2)], Mode.VXLAN, {4: 10})
    assert desired.skipped == [Skipped("node-2", 6, "no IPv6 vxlan device")]
    # no underlay of a family here
    v4_only = LocalNode("node-1", (U4,), LOCAL.pod_cidrs)
    desired = plan(v4_only, [_peer(2)], Mode.VXLAN, DEVICES)
    assert desired.skipped == [Skipped("node-2", 6, "this node has no IPv6 node address")]


LOCAL_AS_PEER = _peer(1)  # this node in the list of all Nodes: ignored


def test_one_address_and_pod_cidr_per_family() -> None:
    with pytest.raises(OverlayError, match="at most one per IP family"):
        Peer("x", (ip_address("10.0.0.1"), ip_address("10.0.0.2")))
    with pytest.raises(OverlayError, match="at most one per IP family"):
        Peer("x", (), (ip_network("10.1.0.0/24"), ip_network("10.2.0.0/24")))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vni", 1 << 24),
        ("vni", -1),
        ("port", 0),
        ("port", 65536),
        ("protocol", 0),  # a delete with protocol 0 would match anyone's route
        ("protocol", 4),
        ("protocol", 256),
        ("table", 0),
        ("table", 255),
        ("device4", ""),
        ("device4", "sixteen-chars-xx"),
        ("device6", "a/b"),
        ("device6", "loxi-vxlan4"),
    ],
)
def test_config_is_checked(field: str, value: object) -> None:
    with pytest.raises(OverlayError):
        OverlayConfig(**{field: value})  # type: ignore[arg-type]
    assert OverlayConfig(vni=0, port=4789, protocol=5, table=1000).table == 1000
