"""A cluster network: three simulated nodes on the real API server reach each other's pods.

One simulated cluster for the module (tests/k8s/simcluster.py): node1 and node2 on one subnet,
node3 behind a router, each a network namespace with its own agent in Kubernetes mode, reaching
the API server over the underlay. For each cross-node mode (routes, vxlan, auto) the agents are
started, a pod is ADDed on each node through the installed plugin and that node's agent, and
the tests check what the kernels hold (read back with pyroute2), what the API, ``loxi-cni
status`` and /metrics say, reachability across nodes in both families, and reconciliation: a
route deleted by hand, an agent killed mid-ping, a Node deleted and recreated (also while an
agent is down). The last test of each mode DELs the pods, stops the agents, runs the documented
teardown and finds nothing of ours left in any namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from loxicni.net import vxlan
from tests.net.overlay_cluster import path_mtu_signals
from tests.support.plugin import PLUGIN

from .cluster import require
from .controlplane import ControlPlane
from .simcluster import SimCluster, SimNode, ping, ping_all, transfer, wait_until

MODES = ("routes", "vxlan", "auto")
ALL = {(a, b) for a in (1, 2, 3) for b in (1, 2, 3) if a != b}
SAME_SUBNET = {(1, 2), (2, 1)}
# (a, b): node a reaches node b's pods directly / through vxlan; the rest are left out
DIRECT = {"routes": SAME_SUBNET, "vxlan": set(), "auto": SAME_SUBNET}
VXLAN = {"routes": set(), "vxlan": ALL, "auto": ALL - SAME_SUBNET}
POD_MTU = {"routes": 1500, "vxlan": 1430, "auto": 1430}  # vxlan over IPv6: 1500 - 70
T = TypeVar("T")


def reached(mode: str) -> set[tuple[int, int]]:
    return DIRECT[mode] | VXLAN[mode]


@pytest.fixture(scope="module")
def sim(
    control_plane: ControlPlane, agent_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimCluster]:
    missing = [t for t in ("ip", "nft", "ping", "curl") if subprocess.run(
        ["sh", "-c", f"command -v {t}"], capture_output=True).returncode]  # fmt: skip
    require(missing, "the simulated cluster")
    others = [n["metadata"]["name"] for n in control_plane.get_json("nodes")["items"]]
    assert others == [], f"Nodes of other tests would be peers too: {others}"
    cluster = SimCluster(control_plane, agent_kubeconfig, tmp_path_factory.mktemp("sim"))
    try:
        cluster.build()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module", params=MODES)
def mode(request: pytest.FixtureRequest, sim: SimCluster) -> Iterator[str]:
    """The agents running in one cross-node mode, a pod on each node; stopped and undone
    afterwards (test_teardown_leaves_nothing checks that undoing left nothing)."""
    mode = str(request.param)
    template = sim.template()
    try:
        parallel(lambda n: n.start_agent(mode, template), sim.nodes)
        for node in sim.nodes:
            node.add_pod(sim.tag)
        yield mode
    finally:
        for node in sim.nodes:
            print(f"----- agent of {node.name} ({mode})\n{node.tail()}")
            node.del_pods()
        parallel(SimNode.stop_agent, sim.nodes)
        for node in sim.nodes:
            subprocess.run(
                ["ip", "netns", "exec", node.ns, PLUGIN, "teardown",
                 "--cni-conf-dir", str(node.conf_dir)],
                env={**os.environ, **node.env}, capture_output=True, timeout=60,
            )  # fmt: skip


def parallel(fn: Callable[[SimNode], T], nodes: list[SimNode]) -> list[T]:
    """``fn`` for every node at once (each node is its own machine); the results in order."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(fn, nodes))


def _node_network(cp: ControlPlane, name: str) -> dict[str, Any] | None:
    res = cp.kubectl("get", "nodenetwork", name, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def _expected_routes(node: SimNode, nodes: list[SimNode], mode: str) -> dict[str, Any]:
    want: dict[str, Any] = {}
    for other in nodes:
        pair = (node.index, other.index)
        if pair in DIRECT[mode]:
            want[str(other.pod4)] = {"gateway": str(other.ipv4), "dev": "eth0", "onlink": False}
            want[str(other.pod6)] = {"gateway": str(other.ipv6), "dev": "eth0", "onlink": False}
        elif pair in VXLAN[mode]:
            want[str(other.pod4)] = {
                "gateway": str(other.pod4.network_address), "dev": "loxi-vxlan4", "onlink": True,
            }  # fmt: skip
            want[str(other.pod6)] = {
                "gateway": str(other.pod6.network_address), "dev": "loxi-vxlan6", "onlink": True,
            }  # fmt: skip
    return want


# ------------------------------------------------------------------ mode-independent
def test_each_agent_may_write_only_its_own_node_network(
    control_plane: ControlPlane, sim: SimCluster, agent_kubeconfig: Path
) -> None:
    """The admission policy of deploy/rbac.yaml: a token naming node1 (bound to a pod on it,
    as a DaemonSet pod's is) may write node1's NodeNetwork and no other; a token naming no
    node may write none. Writes are dry runs: the agents' own objects are left alone."""
    cp = control_plane
    n1, n2, _ = sim.nodes
    as_n1 = cp.kubeconfig_for_token(n1.token)
    who = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=as_n1).stdout)
    assert who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/node-name"] == [n1.name]

    def apply(name: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
        body = {
            "apiVersion": "loxicni.io/v1alpha1",
            "kind": "NodeNetwork",
            "metadata": {"name": name},
            "spec": {"nodeName": name, "mode": "vxlan", "podCIDRs": [], "nodeIPs": []},
        }
        return cp.kubectl(
            "apply", "--server-side", "--dry-run=server", "--field-manager=t", "-f", "-",
            input=json.dumps(body), kubeconfig=kubeconfig, check=False,
        )  # fmt: skip

    def denied(name: str, kubeconfig: Path, why: str) -> bool:
        res = apply(name, kubeconfig)
        return res.returncode != 0 and why in res.stderr

    # the policy is in force a moment after it is created
    wait_until("the admission policy", lambda: denied(n2.name, as_n1, "may write only"), 15)
    assert apply(n1.name, as_n1).returncode == 0
    assert denied(n1.name, agent_kubeconfig, "names no node")
    # a NodeNetwork is named after its node (the schema), whoever writes it
    body = {
        "apiVersion": "loxicni.io/v1alpha1",
        "kind": "NodeNetwork",
        "metadata": {"name": n1.name},
        "spec": {"nodeName": n2.name, "mode": "vxlan", "podCIDRs": [], "nodeIPs": []},
    }
    res = cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    assert res.returncode != 0 and "named after its node" in res.stderr


# ------------------------------------------------------------------ per mode
def test_each_node_programs_every_other(
    control_plane: ControlPlane, sim: SimCluster, mode: str
) -> None:
    """Kernel, CNI config, pods, NodeNetwork, status and metrics agree with the mode."""
    nodes = sim.nodes
    for node in nodes:
        assert node.overlay_routes() == _expected_routes(node, nodes, mode), node.name
        links = node.links()
        if mode == "routes":
            assert "loxi-vxlan4" not in links and "loxi-vxlan6" not in links
        else:
            for version, local, mtu in ((4, node.ipv4, 1450), (6, node.ipv6, 1430)):
                dev = links[f"loxi-vxlan{version}"]
                data = dev["data"]
                assert dev["kind"] == "vxlan" and dev["mtu"] == mtu
                assert dev["mac"] == vxlan.vtep_mac(node.name, version)
                assert data.get("IFLA_VXLAN_ID") == 1 and data.get("IFLA_VXLAN_PORT") == 8472
                key = "IFLA_VXLAN_LOCAL" if version == 4 else "IFLA_VXLAN_LOCAL6"
                assert data.get(key) == str(local) and data.get("IFLA_VXLAN_LEARNING") == 0
        # the pods' MTU: the CNI config the agent rendered, and the pod's interface
        (plugin,) = json.loads(node.conf_path.read_text())["plugins"]
        assert plugin.get("mtu") == (None if mode == "routes" else POD_MTU[mode])
        assert [p.mtu for p in node.pods] == [POD_MTU[mode]]
        # no pod-to-pod traffic is masqueraded: every node's pod CIDRs are exempt
        table = node.nft_table()
        assert table is not None
        exempt = {
            f"{e['prefix']['addr']}/{e['prefix']['len']}"
            for o in table
            if o.get("set", {}).get("name") in ("cluster4", "cluster6")
            for e in o["set"].get("elem", [])
        }
        assert exempt == {c for n in nodes for c in n.pod_cidrs}

        direct = {b for a, b in DIRECT[mode] if a == node.index}
        via = {b for a, b in VXLAN[mode] if a == node.index}
        left_out = {n.name for n in nodes if n is not node} - {
            nodes[b - 1].name for b in direct | via
        }
        status = node.status()["crossNode"]
        assert (status["mode"], status["node"]) == (mode, node.name)
        assert status["nodeIPs"] == [str(node.ipv4), str(node.ipv6)]
        assert (status["direct"], status["viaVxlan"]) == (len(direct), len(via))
        assert status["peersProgrammed"] == len(direct | via) and status["peers"] == 2
        assert set(status["errors"]) == left_out and status["failures"] == []
        assert status["ready"] is (not left_out)
        assert status["podMTU"] == POD_MTU[mode]
        metrics = node.metrics()
        assert f'loxi_cni_cross_node_peers{{path="direct"}} {len(direct)}\n' in metrics
        assert f'loxi_cni_cross_node_peers{{path="vxlan"}} {len(via)}\n' in metrics
        for peer in left_out:
            assert f'loxi_cni_cross_node_peer_errors{{peer="{peer}"}} 2\n' in metrics
        assert "loxi_cni_cross_node_last_sync_timestamp_seconds 1" in metrics

        def published(node: SimNode = node, count: int = len(direct | via)) -> Any:
            nn = _node_network(control_plane, node.name)  # the last mode's, for a moment
            return (
                nn
                and nn["spec"]["mode"] == mode
                and nn["status"]["peers"]["programmed"] == count
                and nn
            )

        nn = wait_until_value(f"NodeNetwork {node.name}", published)
        spec, st = nn["spec"], nn["status"]
        assert spec["mode"] == mode and spec["podCIDRs"] == node.pod_cidrs
        assert spec["nodeIPs"] == [str(node.ipv4), str(node.ipv6)]
        (owner,) = nn["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", node.name, node.uid)
        assert st["peers"] == {
            "known": 2, "programmed": len(direct | via), "direct": len(direct),
            "vxlan": len(via), "withProblems": len(left_out),
        }  # fmt: skip
        assert {p["peer"] for p in st["problems"]} == left_out
        (ready,) = st["conditions"]
        if left_out:
            assert (ready["status"], ready["reason"]) == ("False", "PeersSkipped")
            assert "not one hop away" in ready["message"]
        else:
            assert (ready["status"], ready["reason"]) == ("True", "Synced")
        if mode == "routes":
            assert "vteps" not in spec and "podMTU" not in spec
        else:
            assert spec["podMTU"] == POD_MTU[mode]
            assert [(v["family"], v["mac"], v["vni"], v["port"], v["local"]) for v in
                    spec["vteps"]] == [
                ("IPv4", vxlan.vtep_mac(node.name, 4), 1, 8472, str(node.ipv4)),
                ("IPv6", vxlan.vtep_mac(node.name, 6), 1, 8472, str(node.ipv6)),
            ]  # fmt: skip
    wide = control_plane.kubectl("get", "nodenetworks", "-o", "wide").stdout
    header = wide.splitlines()[0].split()
    for column in ("MODE", "PEERS", "READY", "REASON", "DIRECT", "VXLAN", "VNI", "PORT"):
        assert column in header, wide
    rows = {line.split()[0]: line.split() for line in wide.splitlines()[1:]}
    assert {n.name for n in nodes} <= rows.keys()
    assert all(rows[n.name][1] == mode for n in nodes)


def wait_until_value(what: str, probe: Any, timeout: float = 15) -> Any:
    box: list[Any] = []

    def found() -> bool:
        value = probe()
        if value:
            box.append(value)
        return bool(value)

    wait_until(what, found, timeout, step=0.1)
    return box[-1]


def test_pods_reach_pods_on_other_nodes(sim: SimCluster, mode: str) -> None:
    """Every pod pings every pod the mode reaches, both families; 1 MB of TCP crosses the
    vxlan path (direct in routes mode) intact, with the sender's own address (no masquerade)
    and without any node needing path MTU discovery."""
    pods = {n.index: n.pods[0] for n in sim.nodes}
    pairs = [(pods[a].name, pods[b].ips[v]) for a, b in sorted(reached(mode)) for v in (4, 6)]
    results = ping_all(pairs)
    assert [key for key, ok in results.items() if not ok] == []
    a, b = (1, 3) if VXLAN[mode] else (1, 2)
    before = {n.name: path_mtu_signals(n.ns) for n in sim.nodes}
    assert transfer(pods[a].name, pods[b].name, pods[b].ips[4]) == pods[a].ips[4]
    assert transfer(pods[b].name, pods[a].name, pods[a].ips[6]) == pods[b].ips[6]
    assert {n.name: path_mtu_signals(n.ns) for n in sim.nodes} == before


def test_a_route_deleted_by_hand_comes_back(sim: SimCluster, mode: str) -> None:
    n1, n2, n3 = sim.nodes
    other = n3 if VXLAN[mode] else n2
    before = n1.overlay_routes()
    subprocess.run(["ip", "-n", n1.ns, "route", "del", str(other.pod4), "proto", "76"], check=True)
    took = wait_until("the route to come back", lambda: n1.overlay_routes() == before, 10)
    print(f"restored after {took:.2f} s (resync 2 s)")
    assert ping(n1.pods[0].name, other.pods[0].ips[4], count=2) == 2


def test_agents_killed_while_pinging_lose_at_most_one_packet(sim: SimCluster, mode: str) -> None:
    """SIGKILL both agents of a path in the middle of a ping, restart them: the kernel keeps
    the overlay, the restarted agents find it in place and send nothing."""
    n1, n2, n3 = sim.nodes
    other = n3 if VXLAN[mode] else n2
    devices = {n.name: {k: v["index"] for k, v in n.links().items()} for n in (n1, other)}
    count = 60
    result: list[int] = []
    pinger = threading.Thread(
        target=lambda: result.append(
            ping(n1.pods[0].name, other.pods[0].ips[4], count=count, interval=0.05)
        )
    )
    pinger.start()
    time.sleep(0.5)
    for node in (n1, other):
        node.kill_agent()
    for node in (n1, other):
        node.start_agent(mode, sim.template(), wait=False)
    pinger.join(timeout=30)
    assert result and result[0] >= count - 1, f"{result} of {count} answered"
    print(f"{result[0]} of {count} pings answered across the agents' SIGKILL and restart")
    for node in (n1, other):
        node.wait_synced()
        status = node.status()["crossNode"]
        assert status["lastSyncRequests"] == 0 and status["lastSyncChanges"] == {}
        links = {k: v["index"] for k, v in node.links().items()}
        assert links == devices[node.name]  # no device recreated, no veth lost


def test_a_node_deleted_and_recreated(
    control_plane: ControlPlane, sim: SimCluster, mode: str
) -> None:
    """A Node deleted from the API loses its routes on the other nodes within seconds; an
    agent that was down meanwhile removes them when it starts; recreated, the Node's routes
    are back on every other node within a second, and its pods reachable again."""
    cp = control_plane
    _, n2, n3 = sim.nodes
    victim = n3 if mode != "routes" else n2
    seeing = [n for n in sim.nodes if (n.index, victim.index) in reached(mode)]
    down = seeing[0] if len(seeing) > 1 else None  # an agent down while the Node goes
    live = [n for n in seeing if n is not down]
    cidrs = {str(victim.pod4), str(victim.pod6)}

    def routes_gone(node: SimNode) -> bool:
        return not cidrs & node.overlay_routes().keys()

    def routes_there(node: SimNode) -> bool:
        return cidrs <= node.overlay_routes().keys()

    if down is not None:
        down.kill_agent()
    cp.kubectl("delete", "node", victim.name)
    for node in live:
        took = wait_until(f"{node.name} to drop {victim.name}", lambda n=node: routes_gone(n), 10)
        print(f"{node.name} dropped the deleted Node's routes after {took:.2f} s")
    # the NodeNetwork goes with its Node (ownerReference)
    wait_until("the NodeNetwork to go", lambda: _node_network(cp, victim.name) is None, 30, 0.2)
    if down is not None:
        assert routes_there(down)  # nobody removed them: its agent is down
        down.start_agent(mode, sim.template(), wait=False)
        took = wait_until("the restarted agent to drop them", lambda: routes_gone(down), 15)
        print(f"{down.name} dropped them {took:.2f} s after its start")
        down.wait_synced()

    handles = {node.name: node.ipr() for node in seeing}  # opened before the clock starts
    try:
        start = time.monotonic()
        sim.create_node(victim)
        wait_until(
            f"{', '.join(handles)} to program {victim.name}",
            lambda: all(cidrs <= n.overlay_routes(handles[n.name]).keys() for n in seeing),
            5,
            step=0.005,
        )
        took = time.monotonic() - start
    finally:
        for handle in handles.values():
            handle.close()
    print(f"routes of the recreated Node on {len(seeing)} nodes {took:.2f} s after its POST")
    assert took < 1.0
    for node in seeing:
        assert node.overlay_routes() == _expected_routes(node, sim.nodes, mode)
        assert ping(node.pods[0].name, victim.pods[0].ips[6], count=2) == 2
    # the victim's agent, which held on while its Node was gone, publishes again
    wait_until_value(
        "the NodeNetwork back, owned by the new Node",
        lambda: (
            (nn := _node_network(cp, victim.name))
            and nn["metadata"]["ownerReferences"][0]["uid"] == victim.uid
        ),
    )


def test_teardown_leaves_nothing(sim: SimCluster, mode: str) -> None:
    """DEL of every pod, the agents stopped (their state stays, on purpose), then the
    documented `loxi-cni teardown` on each node: nothing of ours in any namespace."""
    for node in sim.nodes:
        node.del_pods()
    parallel(SimNode.stop_agent, sim.nodes)
    for node in sim.nodes:
        # a stopped agent leaves the overlay in place: flows outlive restarts
        assert node.overlay_routes() == _expected_routes(node, sim.nodes, mode)
    reports = zip(sim.nodes, parallel(SimNode.teardown, sim.nodes), strict=True)
    for node, report in reports:
        assert report["routes"] == len(_expected_routes(node, sim.nodes, mode))
        assert report["devices"] == ([] if mode == "routes" else ["loxi-vxlan4", "loxi-vxlan6"])
        assert report["bridges"] == ["cni0"] and report["kept"] == []
        assert report["masquerade_table"] is True
    for node in sim.nodes:
        assert node.overlay_routes() == {}
        assert sorted(node.links()) == ["eth0", "lo"]
        assert node.nft_table() is None
        assert not node.conf_path.exists()
        state = Path(node.env["LOXI_CNI_STATE_DIR"])
        assert sorted(p.name for p in state.rglob("*") if p.is_file()) == []
    for ns in (sim.switch, sim.router):
        with_routes = subprocess.run(
            ["ip", "-n", ns, "route", "show", "proto", "76"], capture_output=True, text=True
        )
        assert with_routes.stdout.strip() == ""
    assert all(not Path(f"/var/run/netns/{p.name}").exists() for n in sim.nodes for p in n.pods)
