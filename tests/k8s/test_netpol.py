"""NetworkPolicy end to end: the real API server, simulated nodes each running its agent
(tests/k8s/simcluster.py, cross-node over vxlan), pods ADDed through the installed plugin and
their node's agent, and real traffic between them (TCP connect, UDP request/response, raw SCTP
INIT), IPv4 and IPv6, same node (bridged) and across nodes.

The policies below are checked against verdicts written out by hand from the API reference
(``expected``); the seeded corpus and the independent oracle (tests/netpol) are checked the same
way in ``test_netpol_corpus``. Then the agents are killed (-9) and restarted, and a node leaves
and rejoins, while the same probes run: no verdict may change meanwhile.
"""

from __future__ import annotations

import ipaddress
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import wait_for

from .controlplane import ControlPlane
from .netpol_world import World, require_tools, running_world

MODE = "vxlan"
PORTS = ((80, "tcp"), (5432, "tcp"), (53, "udp"), (7777, "sctp"))
Key = tuple[str, str, int, str, int]


@pytest.fixture(scope="module")
def world(
    control_plane: ControlPlane, agent_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    require_tools("the network policy tests")
    work = tmp_path_factory.mktemp("netpol")
    with running_world(control_plane, agent_kubeconfig, work, nodes=3, mode=MODE) as w:
        tag = uuid.uuid4().hex[:4]
        a, b = f"npa-{tag}", f"npb-{tag}"
        w.namespace(a, {"team": "a"})
        w.namespace(b, {"team": "b"})
        n1, n2, _n3 = w.sim.nodes
        w.pod(a, "web", n1, {"app": "web"})
        w.pod(a, "db", n2, {"app": "db"}, [("sql", "TCP", 5432), ("sig", "SCTP", 7777)])
        w.pod(b, "cli", n1, {"app": "cli"})
        w.pod(b, "bweb", n2, {"app": "web"})
        w.pod(a, "other", n2, {"app": "other"})
        w.listen(PORTS)
        yield w


def policies(w: World) -> list[dict[str, Any]]:
    a, b = w.namespaces
    node2_v4 = str(w.sim.nodes[1].pod4)
    bweb_v4 = w.pods[f"{b}/bweb"].ips[4]

    def np(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"namespace": ns, "name": name}, "spec": spec}  # fmt: skip

    return [
        np(a, "db-in", {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                 "ports": [{"port": "sql"}, {"protocol": "SCTP", "port": "sig"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}},
                           "podSelector": {"matchLabels": {"app": "cli"}}}],
                 "ports": [{"protocol": "UDP", "port": 53}]},
            ],
        }),
        np(b, "cli-out", {
            "podSelector": {"matchLabels": {"app": "cli"}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                         "podSelector": {"matchLabels": {"app": "db"}}}],
                 "ports": [{"protocol": "UDP", "port": 50, "endPort": 60}]},
                {"to": [{"ipBlock": {"cidr": node2_v4, "except": [f"{bweb_v4}/32"]}}],
                 "ports": [{"port": 80}]},
            ],
        }),
        np(b, "deny-in", {"podSelector": {}, "ingress": []}),
    ]  # fmt: skip


def expected(w: World, key: Key) -> bool:
    """The verdicts of ``policies``, read off the API reference by hand."""
    src, dst, port, proto, family = key
    name = {ref: ref.split("/")[1] for ref in w.pods}
    s, d = name[src], name[dst]
    # egress: only cli is isolated
    if s == "cli":
        to_db = d == "db" and proto == "udp" and 50 <= port <= 60
        ip = ipaddress.ip_address(w.pods[dst].ips[family])
        in_block = family == 4 and ip in w.sim.nodes[1].pod4 and d != "bweb"
        if not (to_db or (in_block and proto == "tcp" and port == 80)):
            return False
    # ingress: db by its two rules, cli and bweb by deny-in (nothing)
    if d == "db":
        from_web = s == "web" and ((proto, port) in (("tcp", 5432), ("sctp", 7777)))
        from_cli = s == "cli" and (proto, port) == ("udp", 53)
        return from_web or from_cli
    return d not in ("cli", "bweb")


def all_probes(w: World) -> list[Key]:
    return [
        (s, d, port, proto, family)
        for s in w.pods
        for d in w.pods
        if s != d
        for port, proto in PORTS
        for family in (4, 6)
    ]


def mismatches(w: World, got: dict[Key, bool]) -> list[str]:
    return [
        f"{k[0]}->{k[1]} {k[3]}/{k[2]} IPv{k[4]}: got {'allowed' if v else 'denied'}"
        for k, v in sorted(got.items())
        if v != expected(w, k)
    ]


def test_no_policy_everything_flows(world: World) -> None:
    world.apply_policies([])
    got = world.probe(all_probes(world))
    assert [k for k, v in got.items() if not v] == []


def test_policies_enforced_same_node_and_across(world: World) -> None:
    world.apply_policies(policies(world))
    got = world.probe(all_probes(world))
    assert mismatches(world, got) == []
    allowed = {k for k, v in got.items() if v}
    a, b = world.namespaces
    # the interesting ones, spelled out: cross-node named ports, SCTP, both families
    assert (f"{a}/web", f"{a}/db", 5432, "tcp", 6) in allowed
    assert (f"{a}/web", f"{a}/db", 7777, "sctp", 4) in allowed
    assert (f"{b}/cli", f"{a}/db", 53, "udp", 6) in allowed
    assert (f"{b}/cli", f"{a}/other", 80, "tcp", 4) in allowed  # the ipBlock
    assert (f"{b}/cli", f"{a}/other", 80, "tcp", 6) not in allowed
    assert (f"{b}/cli", f"{a}/web", 80, "tcp", 4) not in allowed  # same node, egress isolated


def test_status_metrics_and_interfaces_name_the_policies(world: World) -> None:
    world.apply_policies(policies(world))
    a, b = world.namespaces
    n1, n2, _ = world.sim.nodes
    status = n2.status()["networkPolicy"]
    assert status["selectedPods"][f"{a}/db"] == {"ingress": ["db-in"], "egress": []}
    assert status["selectedPods"][f"{b}/bweb"] == {"ingress": ["deny-in"], "egress": []}
    assert f"{a}/other" not in status["selectedPods"]
    assert n1.status()["networkPolicy"]["selectedPods"][f"{b}/cli"] == {
        "ingress": ["deny-in"], "egress": ["cli-out"],
    }  # fmt: skip
    metrics = n2.metrics()
    assert "loxi_cni_netpol_policies " in metrics
    dropped = f'namespace="{b}",pod="bweb",direction="ingress"'
    assert f"loxi_cni_netpol_dropped_packets_total{{{dropped}}}" in metrics
    allowed = f'namespace="{a}",policy="db-in",direction="ingress"'
    assert f"loxi_cni_netpol_allowed_packets_total{{{allowed}}}" in metrics
    items = world.cp.get_json("podnetworkinterfaces", "-n", a)["items"]
    by_pod = {i["spec"]["podName"]: i["status"].get("policies") for i in items}
    assert by_pod["db"] == {"ingress": ["db-in"], "egress": []}
    assert by_pod["web"] == {"ingress": [], "egress": []}


def test_restarts_and_node_churn_change_no_verdict(world: World) -> None:
    """Probes run all along while each agent is killed (-9) and restarted, and while node 3
    leaves the API and comes back: every round must give the expected verdicts."""
    world.apply_policies(policies(world))
    a, b = world.namespaces
    sample: list[Key] = [
        (f"{a}/web", f"{a}/db", 5432, "tcp", 4), (f"{b}/cli", f"{a}/db", 5432, "tcp", 4),
        (f"{a}/other", f"{a}/db", 7777, "sctp", 6), (f"{b}/cli", f"{a}/other", 80, "tcp", 4),
        (f"{a}/web", f"{b}/bweb", 53, "udp", 6), (f"{a}/db", f"{a}/other", 53, "udp", 4),
        (f"{b}/cli", f"{a}/db", 53, "udp", 4), (f"{a}/web", f"{b}/cli", 80, "tcp", 6),
    ]  # fmt: skip
    stop = threading.Event()
    rounds: list[list[str]] = []

    def probe_loop() -> None:
        while not stop.is_set():
            rounds.append(mismatches(world, world.probe(sample, timeout=0.5)))

    def rounds_after(mark: int, more: int = 1) -> None:
        wait_for("probe rounds", lambda: len(rounds) >= mark + more, timeout=60)

    thread = threading.Thread(target=probe_loop)
    thread.start()
    template = world.sim.template()
    try:
        for node in world.sim.nodes:
            node.kill_agent()
            rounds_after(len(rounds))  # a whole round with the agent dead
            node.start_agent(MODE, template, wait=False)
            mark = len(rounds)
            node.wait_synced(60)
            rounds_after(mark)  # and one across its start
        world.wait_enforced()
        third = world.sim.nodes[2]
        third.kill_agent()
        world.cp.kubectl("delete", "node", third.name)
        rounds_after(len(rounds))
        world.sim.create_node(third)
        third.start_agent(MODE, template)
        world.wait_enforced()
        rounds_after(len(rounds))
    finally:
        stop.set()
        thread.join(timeout=60)
    assert len(rounds) >= 8
    assert [r for r in rounds if r] == []
    rebuilds = [n.status()["networkPolicy"]["rebuilds"] for n in world.sim.nodes]
    assert rebuilds == [1, 1, 1]  # each new agent swapped the old table once, then diffs
