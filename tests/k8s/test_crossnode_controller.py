"""The cross-node controller's logic, with the kernel real and the API played by the test.

``CrossNode.sync`` runs inside a network namespace of its own (an underlay veth holding
10.0.0.1/16 and fd00:50::1/64, so every peer is one hop away) on a Node table the test fills
as the watch would, against an API double that records the NodeNetworks written. What the
kernel holds is read back with pyroute2 and nft. Also here: the pieces it is made of (the Node
table's filter, the NodeNetwork body, the CNI config's MTU, the overlay record, the options).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from lightkube.models.core_v1 import NodeAddress, NodeCondition, NodeSpec, NodeStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from pyroute2 import IPRoute

from loxicni.cli import build_parser, cli_main
from loxicni.k8s import cniconf, nodenetwork
from loxicni.k8s.crossnode import CrossNode
from loxicni.k8s.nodeconf import NodeConfWriter
from loxicni.k8s.nodes import NodeTable, node_info
from loxicni.k8s.options import KubeOptions
from loxicni.net import netns, overlay_record
from loxicni.net.errors import OverlayError
from loxicni.net.overlay import OverlayConfig
from loxicni.net.peers import Mode
from tests.support.counting_rtnl import CountingRtnl


def node(
    name: str,
    i: int,
    *,
    ips: tuple[str, ...] | None = None,
    cidrs: tuple[str, ...] | None = None,
    ready: str = "True",
    uid: str = "",
) -> Node:
    """A Node as the API gives it (lightkube's model), with dual-stack defaults for peer i."""
    ips = ips if ips is not None else (f"10.0.1.{i}", f"fd00:50::1:{i:x}")
    cidrs = cidrs if cidrs is not None else (f"10.201.{i}.0/24", f"fd01:{i:x}::/64")
    return Node(
        metadata=ObjectMeta(name=name, uid=uid or f"uid-{name}"),
        spec=NodeSpec(podCIDR=cidrs[0] if cidrs else None, podCIDRs=list(cidrs)),
        status=NodeStatus(
            addresses=[NodeAddress(type="Hostname", address=name)]
            + [NodeAddress(type="InternalIP", address=ip) for ip in ips],
            conditions=[NodeCondition(type="Ready", status=ready)],
        ),
    )


# ------------------------------------------------------------------ the Node table
def test_node_info_keeps_what_the_overlay_uses() -> None:
    info = node_info(
        node("n", 1, ips=("10.0.1.1", "10.0.1.9", "fd00::1", "not-an-ip"),
             cidrs=("10.201.1.0/24", "fd01:1::/64", "10.202.0.0/24"))
    )  # fmt: skip
    assert info is not None
    assert info.node_ips == (ip_address("10.0.1.1"), ip_address("fd00::1"))  # first per family
    assert info.pod_cidrs == (ip_network("10.201.1.0/24"), ip_network("fd01:1::/64"))
    assert (info.peer.name, info.peer.node_ips, info.peer.pod_cidrs) == (
        "n", info.node_ips, info.pod_cidrs,
    )  # fmt: skip
    legacy = Node(metadata=ObjectMeta(name="old"), spec=NodeSpec(podCIDR="10.9.0.0/24"))
    assert node_info(legacy).pod_cidrs == (ip_network("10.9.0.0/24"),)  # type: ignore[union-attr]
    assert node_info(Node(metadata=ObjectMeta())) is None


def test_the_table_tells_changes_that_matter_from_status_reports() -> None:
    table = NodeTable()
    assert not table.listed
    assert table.replace([node_info(node("a", 1)), node_info(node("b", 2))])  # type: ignore[list-item]
    assert table.listed and len(table) == 2
    assert not table.replace([node_info(node("a", 1)), node_info(node("b", 2))])  # type: ignore[list-item]
    # the kubelet's status report: conditions move, nothing the overlay uses does
    assert not table.put(node_info(node("a", 1, ready="False")))  # type: ignore[arg-type]
    assert table.put(node_info(node("a", 1, ips=("10.0.1.99",))))  # type: ignore[arg-type]
    assert table.put(node_info(node("a", 1, cidrs=("10.201.77.0/24",))))  # type: ignore[arg-type]
    assert table.put(node_info(node("a", 1, uid="recreated")))  # type: ignore[arg-type]
    assert table.put(node_info(node("c", 3)))  # type: ignore[arg-type]
    assert table.remove("c") and not table.remove("c")
    assert sorted(n.name for n in table.snapshot()) == ["a", "b"]


# ------------------------------------------------------------------ the controller
@dataclass
class FakeApi:
    """What CrossNode uses of Api: the NodeNetwork written, kept as the API would."""

    node: str
    client: Any = None
    written: list[dict[str, Any]] = field(default_factory=list)
    stored: dict[str, Any] | None = None

    def apply_node_network(self, body: dict[str, Any]) -> None:
        self.written.append(body)
        self.stored = json.loads(json.dumps(body))

    def node_network(self) -> dict[str, Any] | None:
        return self.stored


@dataclass
class Host:
    """A netns playing this node, and the controller running in it."""

    ns: str
    fd: int
    cross: CrossNode
    api: FakeApi
    rt: CountingRtnl
    conf: NodeConfWriter

    def sync(self, *, periodic: bool = False) -> Any:
        return self.run(lambda: self.cross.sync(self.rt, periodic=periodic))

    def run(self, fn: Any) -> Any:
        """``fn`` in the node's netns (sysctls, nft and new netlink sockets included)."""
        return netns.run_in(self.fd, fn)

    def links(self) -> list[str]:
        with IPRoute(netns=self.ns) as ipr:
            return sorted(m.get("IFLA_IFNAME") for m in ipr.get_links())

    def feed(self, *nodes: Node) -> None:
        self.cross._listed(list(nodes))

    def routes(self) -> dict[str, Any]:
        with IPRoute(netns=self.ns) as ipr:
            return {
                f"{m.get('RTA_DST')}/{m['dst_len']}": m.get("RTA_GATEWAY")
                for family in (2, 10)
                for m in ipr.get_routes(family=family, table=254)
                if m["proto"] == 76
            }

    def cluster_set(self) -> set[str]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "-j", "list", "table", "inet", "loxi-cni"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return {
            f"{e['prefix']['addr']}/{e['prefix']['len']}"
            for o in json.loads(out)["nftables"]
            if o.get("set", {}).get("name") in ("cluster4", "cluster6")
            for e in o["set"].get("elem", [])
        }


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    monkeypatch.setenv("LOXI_CNI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOXI_CNI_RUN_DIR", str(tmp_path / "run"))
    name = f"lxcn-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    fd = netns.open_netns(f"/var/run/netns/{name}")
    rt = CountingRtnl(netns.netlink_socket_in(fd))
    try:
        script = (
            "link set lo up\nlink add eth0 type veth peer name eth1\n"
            "link set eth0 up\nlink set eth1 up\n"
            "addr add 10.0.0.1/16 dev eth0\naddr add fd00:50::1/64 dev eth0 nodad\n"
        )
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=script.encode(), check=True)
        options = KubeOptions(
            node_name="self", conf_dir=tmp_path / "net.d", cross_node="vxlan", resync=30
        )
        api = FakeApi("self")
        conf = NodeConfWriter(options)
        config = options.overlay()
        assert config is not None
        cross = CrossNode(options, api, config, conf)  # type: ignore[arg-type]
        yield Host(name, fd, cross, api, rt, conf)
    finally:
        rt.close()
        os.close(fd)
        subprocess.run(["ip", "netns", "del", name], check=False)


SELF = ("10.0.0.1", "fd00:50::1")


def test_sync_programs_peers_and_publishes(host: Host) -> None:
    assert host.sync() is None and host.routes() == {}  # no list yet: nothing known
    host.feed(node("self", 0, ips=SELF), node("a", 1), node("b", 2), node("c", 3))
    assert host.cross.wake.is_set()
    report = host.sync()
    assert report.ok and report.skipped == []
    # per peer and family: a route, a neighbour and an FDB entry, all in pipelined batches
    assert report.changes == {"route add": 6, "neigh set": 6, "fdb set": 6}
    assert host.routes() == {
        **{f"10.201.{i}.0/24": f"10.201.{i}.0" for i in (1, 2, 3)},
        **{f"fd01:{i}::/64": f"fd01:{i}::" for i in (1, 2, 3)},
    }
    assert host.cluster_set() == {
        "10.201.0.0/24", "fd01::/64",
        *(f"10.201.{i}.0/24" for i in (1, 2, 3)), *(f"fd01:{i}::/64" for i in (1, 2, 3)),
    }  # fmt: skip
    # the CNI config's pod MTU: vxlan's over IPv6, the smaller
    assert host.conf.mtu == 1430
    (nn,) = host.api.written
    assert nn["metadata"]["name"] == "self"
    assert nn["metadata"]["ownerReferences"][0]["uid"] == "uid-self"
    assert nn["spec"]["podMTU"] == 1430 and len(nn["spec"]["vteps"]) == 2
    assert nn["status"]["peers"] == {
        "known": 3, "programmed": 3, "direct": 0, "vxlan": 3, "withProblems": 0,
    }  # fmt: skip
    assert nn["status"]["conditions"][0]["reason"] == "Synced"
    report = host.cross.report()
    assert (report["peersProgrammed"], report["viaVxlan"], report["ready"]) == (3, 3, True)
    assert 'loxi_cni_cross_node_peers{path="vxlan"} 3' in host.cross.metrics()

    # nothing changed: reads only, nothing written (kernel, nft, API)
    host.rt.reset()
    assert host.sync(periodic=True).requests == 0 and host.rt.modifying == 0
    assert len(host.api.written) == 1


def test_one_node_change_costs_a_few_requests(host: Host) -> None:
    peers = [node(f"n{i}", i) for i in range(1, 41)]
    host.feed(node("self", 0, ips=SELF), *peers)
    assert host.sync().changes["route add"] == 80
    host.cross.wake.clear()
    # a status report of a peer: not even a sync
    host.cross._event("MODIFIED", node("n7", 7, ready="False"))
    assert not host.cross.wake.is_set()
    # a peer's node IPs change: its FDB entries only (replaced in place)
    host.cross._event("MODIFIED", node("n7", 7, ips=("10.0.9.7", "fd00:50::9:7")))
    assert host.cross.wake.is_set()
    host.rt.reset()
    assert host.sync().changes == {"fdb set": 2} and host.rt.modifying == 2
    # a peer deleted: its route, neighbour and FDB entry per family
    host.cross._event("DELETED", node("n8", 8))
    host.rt.reset()
    assert host.sync().changes == {"route del": 2, "neigh del": 2, "fdb del": 2}
    # one added
    host.cross._event("ADDED", node("n99", 99))
    host.rt.reset()
    assert host.sync().changes == {"route add": 2, "neigh set": 2, "fdb set": 2}
    assert host.rt.modifying == 6


def test_without_its_node_or_node_ip_the_kernel_is_left_alone(host: Host) -> None:
    host.feed(node("self", 0, ips=SELF), node("a", 1))
    host.sync()
    before = host.routes()
    assert len(before) == 2
    host.feed(node("a", 1))  # our Node gone from the API
    assert host.sync() is None and host.routes() == before
    assert host.cross.report()["reason"] == "NodeNotFound"
    host.feed(node("self", 0, ips=("192.0.2.1",)), node("a", 1))  # an address not ours
    assert host.sync() is None and host.routes() == before
    assert host.cross.report()["reason"] == "NoNodeIP"
    assert host.api.written[-1]["status"]["conditions"][0]["reason"] == "NoNodeIP"


def test_problems_are_reported_per_peer(host: Host) -> None:
    host.feed(
        node("self", 0, ips=SELF),
        node("good", 1),
        node("v4only", 2, ips=("10.0.1.2",)),  # its IPv6 pod CIDR cannot be reached
        node("overlap", 3, cidrs=("10.201.1.0/25",)),  # inside good's
    )
    host.sync()
    report = host.cross.report()
    assert report["peersProgrammed"] == 1 and not report["ready"]
    assert report["reason"] == "PeersSkipped"
    assert set(report["errors"]) == {"v4only", "overlap"}
    assert report["errors"]["v4only"] == ["IPv6: no IPv6 node address"]
    assert "overlaps node good's" in report["errors"]["overlap"][0]
    metrics = host.cross.metrics()
    assert 'loxi_cni_cross_node_peer_errors{peer="overlap"} 1' in metrics
    problems = host.api.written[-1]["status"]["problems"]
    assert {p["peer"] for p in problems} == {"v4only", "overlap"}


# ------------------------------------------------------------------ the pieces
def test_node_network_body_and_fingerprint() -> None:
    state = nodenetwork.NodeNetworkState(
        node="n1", node_uid="u", mode="auto", pod_cidrs=["10.1.0.0/24"], node_ips=["10.0.0.1"],
        direct=2, vxlan=1, peers_known=4, last_sync="2026-01-01T00:00:00Z", ready=False,
        reason="PeersSkipped", message="x" * 5000, transition="2026-01-01T00:00:00Z",
        problems=[nodenetwork.Problem(f"p{i}", "why") for i in range(30)],
    )  # fmt: skip
    body = nodenetwork.body(state)
    assert body["status"]["peers"]["programmed"] == 3
    assert body["status"]["peers"]["withProblems"] == 30
    assert len(body["status"]["problems"]) == nodenetwork.MAX_PROBLEMS
    assert len(body["status"]["conditions"][0]["message"]) == nodenetwork.MAX_MESSAGE
    later = nodenetwork.body(
        nodenetwork.NodeNetworkState(**{**state.__dict__, "last_sync": "2026-01-01T00:05:00Z"})
    )
    assert nodenetwork.fingerprint(later) == nodenetwork.fingerprint(body)
    moved = nodenetwork.body(nodenetwork.NodeNetworkState(**{**state.__dict__, "direct": 3}))
    assert nodenetwork.fingerprint(moved) != nodenetwork.fingerprint(body)


def test_the_pod_mtu_goes_into_the_cni_config_unless_the_template_sets_one(
    tmp_path: Path,
) -> None:
    template = cniconf.load_template(None)
    assert not cniconf.sets_mtu(template)
    conf = cniconf.render(template, ["10.1.0.0/24"], 1430)
    assert conf["plugins"][0]["mtu"] == 1430
    template["plugins"][0]["mtu"] = 9000
    assert cniconf.sets_mtu(template)
    assert cniconf.render(template, ["10.1.0.0/24"], 1430)["plugins"][0]["mtu"] == 9000
    # encapsulating: no config before the overlay knows the MTU
    writer = NodeConfWriter(KubeOptions(node_name="n", conf_dir=tmp_path, cross_node="auto"))
    writer.node_changed(node("n", 1))
    assert not list(tmp_path.iterdir()) and "MTU" in writer.error
    writer.set_mtu(1450)
    (written,) = tmp_path.iterdir()
    assert json.loads(written.read_text())["plugins"][0]["mtu"] == 1450
    # routes: the template as it is, at once
    plain = NodeConfWriter(KubeOptions(node_name="n", conf_dir=tmp_path / "r", cross_node="routes"))
    plain.node_changed(node("n", 1))
    (written,) = (tmp_path / "r").iterdir()
    assert "mtu" not in json.loads(written.read_text())["plugins"][0]


def test_the_overlay_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOXI_CNI_STATE_DIR", str(tmp_path))
    assert overlay_record.load() is None
    config = OverlayConfig(mode=Mode.AUTO, vni=7, port=4789, device4="x4", device6="x6")
    overlay_record.save(config)
    assert overlay_record.load() == config
    assert not overlay_record.left_behind(config, OverlayConfig(mode=Mode.ROUTES, device4="x4",
                                                                  device6="x6"))  # fmt: skip
    assert overlay_record.left_behind(config, OverlayConfig())  # other device names
    assert overlay_record.left_behind(config, None)  # no overlay any more
    (tmp_path / "overlay.json").write_text("{broken")
    assert overlay_record.load() is None
    overlay_record.forget()
    assert not (tmp_path / "overlay.json").exists()


def test_cross_node_options() -> None:
    assert KubeOptions(node_name="n").overlay() is None
    config = KubeOptions(node_name="n", cross_node="auto", vxlan_vni=5, vxlan_device="ov").overlay()
    assert config == OverlayConfig(mode=Mode.AUTO, vni=5, device4="ov4", device6="ov6")
    with pytest.raises(OverlayError, match="24 bits"):
        KubeOptions(node_name="n", cross_node="vxlan", vxlan_vni=1 << 24).overlay()
    with pytest.raises(SystemExit, match="needs Kubernetes mode"):
        cli_main(["agent", "--cross-node", "vxlan", "--metrics", "off"])
    with pytest.raises(SystemExit, match="not a UDP port"):
        cli_main(["agent", "--kubeconfig", "/nonexistent", "--cross-node", "vxlan",
                  "--vxlan-port", "0"])  # fmt: skip
    args = build_parser().parse_args(["agent", "--kubeconfig", "k"])
    assert args.cross_node == "none"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent", "--cross-node", "bgp"])


def test_an_agent_started_without_the_overlay_removes_the_recorded_one(host: Host) -> None:
    """What a run made is recorded in the state dir: an agent started with another overlay
    (other device names) or none at all removes it; with the same one it keeps it (flows)."""
    from loxicni.agent.teardown import remove_leftovers

    host.feed(node("self", 0, ips=SELF), node("a", 1))
    host.sync()
    assert len(host.routes()) == 2
    config = host.cross.config
    host.rt.reset()
    host.run(lambda: remove_leftovers(config))
    assert len(host.routes()) == 2 and host.rt.modifying == 0
    host.run(lambda: remove_leftovers(OverlayConfig(device4="other4", device6="other6")))
    assert host.routes() == {} and host.links() == ["eth0", "eth1", "lo"]
    assert overlay_record.load() == config  # the other run records its own when it syncs
    host.sync()
    host.run(lambda: remove_leftovers(None))
    assert host.routes() == {} and overlay_record.load() is None
    assert host.cluster_set() == set()
