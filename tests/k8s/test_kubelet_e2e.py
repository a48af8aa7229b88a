"""A real kubelet runs Pods on loxi-cni: the node path of a cluster, nothing played by the test.

The control plane is real (etcd, kube-apiserver, kube-controller-manager), deploy/'s manifests
are applied, and on this machine run containerd 1.6 (its CRI), a kubelet that registers its Node,
and the loxi-cni agent in Kubernetes mode with its ServiceAccount's token. The agent writes the
CNI config into the conf dir containerd's CRI reads, from the Node's pod CIDRs; the CRI execs
loxi-cni from its bin dir for every sandbox the kubelet asks for. The test only talks to the API
(create, exec, delete Pods) and reads the node's state back: host-local reservations, netlink in
each pod's netns, the agent's records, libcni's result cache, nftables.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from loxicni.net import masq
from tests.runtimes import oci
from tests.runtimes.helpers import CRICTL, LOOPBACK
from tests.runtimes.runtimes import Containerd
from tests.support.plugin import PLUGIN
from tests.support.probes import Probe, Servers, run_probes
from tests.support.waiting import wait_for

from .cluster import (
    BUSYBOX,
    Cluster,
    Sandbox,
    busybox_pod,
    check_interface,
    check_network_status,
    free_pod_cidr,
    node_ready,
    require,
    wait_pod_ready,
)
from .controlplane import ControlPlane
from .simcluster import OneShotServer, SimCluster, fetch

PAUSE = "loxi.local/pause:rt"  # containerd's sandbox_image (tests.runtimes.runtimes.Containerd)
PORT = 8080
# libcni (in containerd 1.6) caches each ADD's result here, whatever the CRI config says.
CNI_CACHE = Path("/var/lib/cni/results")
TOOLS = ("containerd", "ctr", "runc", "gcc", "ip", "nft", "umount", "ping", "curl")
HOST = 100  # the kubelet node's address in the simulated cluster's first subnet

# containerd's CRI runs this as `loxi-cni`: the installed thin client, pointed at the test's
# agent (and, were the agent down, at its state dir). Each call is logged for the assertions.
WRAPPER = """#!/bin/sh
export LOXI_CNI_SOCKET={socket} LOXI_CNI_STATE_DIR={state_dir}
echo "$CNI_COMMAND $CNI_CONTAINERID ${{CNI_NETNS:--}}" >> {log}
exec {plugin} "$@"
"""


@pytest.fixture(scope="module")
def images(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[oci.Image]]:
    """Everything the node needs, or the reason it cannot run; then its two images (no
    registry here: they are imported into containerd's k8s.io namespace)."""
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [t for t in TOOLS if shutil.which(t) is None]
    paths = (CRICTL, LOOPBACK, oci.BUSYBOX, control_plane.bin_dir / "kubelet")
    missing += [str(p) for p in paths if not p.exists()]
    missing += [] if os.access(PLUGIN, os.X_OK) else [PLUGIN]
    require(missing, "a kubelet node on loxi-cni")
    directory = tmp_path_factory.mktemp("kubelet-images")
    yield [
        oci.pause_image(directory / "pause.tar", PAUSE, directory),
        oci.busybox_image(directory / "busybox.tar", BUSYBOX),
    ]
    shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Node:
    """The node under test: the agent's side (`cluster`), its runtime and the CNI call log."""

    cluster: Cluster
    containerd: Containerd
    calls_log: Path

    def calls(self) -> list[tuple[str, str, str]]:
        """(command, container ID, netns) of every exec of loxi-cni by the CRI."""
        if not self.calls_log.exists():
            return []
        rows = [line.split() for line in self.calls_log.read_text().splitlines()]
        return [(r[0], r[1], r[2]) for r in rows if len(r) == 3]

    def sandbox(self, pod: dict[str, Any]) -> Sandbox:
        """The Pod's sandbox as the CRI knows it (found by the UID label the kubelet sets)."""
        uid = pod["metadata"]["uid"]
        out = self.containerd.crictl("pods", "--label", f"io.kubernetes.pod.uid={uid}", "-q")
        (sandbox_id,) = out.stdout.split()
        status = self.containerd.inspectp(sandbox_id)  # remembers the netns for close()
        (netns,) = [
            ns["path"]
            for ns in status["info"]["runtimeSpec"]["linux"]["namespaces"]
            if ns["type"] == "network"
        ]
        sandbox = Sandbox(
            name=pod["metadata"]["name"],
            namespace=pod["metadata"]["namespace"],
            uid=uid,
            sandbox_id=sandbox_id,
            netns=Path(netns).name,
        )
        # The ADD's result as the runtime got it (libcni's cache), for check_interface.
        cached = _cached(self.cluster, sandbox)
        assert cached is not None, f"no cached ADD result for {sandbox.name}"
        sandbox.result = cached
        return sandbox


@pytest.fixture(scope="module")
def sim(
    control_plane: ControlPlane, agent_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimCluster]:
    """Two simulated nodes for the kubelet node to join: one on its subnet, one behind a
    router; the host joins their switch through a veth (addresses and routes of the test's
    own, removed afterwards)."""
    cluster = SimCluster(control_plane, agent_kubeconfig, tmp_path_factory.mktemp("sim"))
    try:
        cluster.build(nodes=2)
        cluster.join_host()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def node(
    control_plane: ControlPlane,
    sim: SimCluster,
    images: list[oci.Image],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    """containerd, a kubelet registering the Node (pod CIDRs patched in at once) with its
    InternalIPs on the veth into the simulated cluster, then the agent (--cross-node auto, a
    token bound to the Node), which writes the CNI config; ready once the Node is; then the
    simulated nodes' agents, and a pod on each. Undone in reverse order, whatever failed: the
    kubelet first (else it restarts what is being removed), containerd (its sandboxes' DELs
    still reach the agent), the simulated nodes' pods and agents, the agent's network, the
    Node, and the documented teardown of what the agent made for the node."""
    cp = control_plane
    tmp_path = tmp_path_factory.mktemp("kubelet")
    namespace = f"kubelet-{uuid.uuid4().hex[:6]}"
    cp.create_namespace(namespace)
    v4 = free_pod_cidr()
    v6 = ipaddress.ip_network(f"fd97:{v4.network_address.packed[2]:x}::/64")
    name = f"kubelet-{uuid.uuid4().hex[:6]}"
    cluster = Cluster(cp, namespace, tmp_path, name, [str(v4), str(v6)])
    # the overlay's own settings, so no other vxlan device on this host is in the way
    overlay = (
        "--vxlan-device", f"lx{sim.tag}", "--vxlan-port", str(40000 + int(sim.tag, 16) % 20000),
        "--vxlan-vni", str(1000 + int(sim.tag, 16) % 1000),
    )  # fmt: skip
    cluster.extra_args = ["--cross-node", "auto", *overlay]
    cluster.network_policy = True  # the host's own table, deleted at cleanup if it was not there
    bin_dir, calls_log = tmp_path / "cni-bin", tmp_path / "cni-calls.log"
    bin_dir.mkdir()
    cluster.conf_dir.mkdir()  # containerd watches it from the start
    wrapper = bin_dir / "loxi-cni"
    wrapper.write_text(
        WRAPPER.format(
            socket=cluster.socket, state_dir=cluster.state_dir, log=calls_log, plugin=PLUGIN
        )
    )
    wrapper.chmod(0o755)
    shutil.copy2(LOOPBACK, bin_dir / "loopback")
    cgroup_root = f"/loxi-kubelet-{cluster.tag}"
    containerd = Containerd(tmp_path / "containerd", bin_dir, cluster.conf_dir, cgroup_root)
    node_ips = ",".join(map(str, sim.underlays[0].ip(HOST)))
    try:
        containerd.start()
        for image in images:
            containerd.import_image(image, namespace="k8s.io")
        cp.start_kubelet(
            name, containerd.socket, pod_cidrs=cluster.pod_cidrs, cgroup_root=cgroup_root,
            node_ip=node_ips,
        )  # fmt: skip
        cluster.start_agent()
        wait_for("the agent's CNI config", cluster.conf_path.exists)
        wait_for("the Node to be Ready", lambda: node_ready(cp, name), timeout=90)
        template = sim.template()
        for sim_node in sim.nodes:
            sim_node.start_agent("auto", template, extra=overlay)
            sim_node.add_pod(sim.tag)
        yield Node(cluster, containerd, calls_log)
    finally:
        # Shown only when the test failed (pytest's captured teardown output).
        logs = (cp.log(f"kubelet-{name}"), containerd.log, cluster.log, calls_log)
        for log in (*logs, *(n.log for n in sim.nodes)):
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(none)"
            print(f"----- {log.name}\n{tail}")
        try:
            cp.stop_kubelet(name)
            containerd.close()
            cluster.kubectl(
                "delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force",
                check=False,
            )  # fmt: skip
            for sim_node in sim.nodes:
                sim_node.del_pods()
                sim_node.stop_agent()
        finally:
            try:
                cluster.cleanup()
                _teardown_host(cluster, overlay[1])
            finally:
                cp.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _teardown_host(cluster: Cluster, device: str) -> None:
    """`loxi-cni uninstall` on the host for this node's agent (its own run, tree and bin dirs:
    the host's stay untouched), then nothing of it is left: no route of the overlay, no vxlan
    device, no CNI config."""
    private = {"LOXI_CNI_RUN_DIR": str(cluster.workdir / "run")}
    dirs = ("--tree-dir", str(cluster.workdir / "trees"), "--cni-bin-dir", str(cluster.workdir))
    out = subprocess.run(
        [PLUGIN, "uninstall", "--json", "--cni-conf-dir", str(cluster.conf_dir),
         "--vxlan-device", device, *dirs],
        env={**os.environ, **cluster.env, **private}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    routes = (
        subprocess.run(
            ["ip", "route", "show", "proto", "76"], capture_output=True, text=True, check=True
        ).stdout
        + subprocess.run(
            ["ip", "-6", "route", "show", "proto", "76"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert routes.strip() == "", f"overlay routes left on the host: {routes}"
    with IPRoute() as ipr:
        left = [n for n in (f"{device}4", f"{device}6") if ipr.link_lookup(ifname=n)]
    assert left == [] and not cluster.conf_path.exists()


def _cached(cluster: Cluster, sandbox: Sandbox) -> dict[str, Any] | None:
    """The ADD result libcni cached for the sandbox's eth0 (removed by a successful DEL)."""
    path = CNI_CACHE / f"{cluster.network}-{sandbox.sandbox_id}-eth0"
    try:
        result: dict[str, Any] = json.loads(path.read_text())["result"]
    except FileNotFoundError:
        return None
    return result


def test_kubelet_runs_pods_on_loxi_cni(node: Node) -> None:
    """Pods created through the API run with the addresses loxi-cni reserved, the agent
    publishes what the kernel holds, the host (the kubelet's probe) and the other pod
    (kubectl exec, through the kubelet) reach a pod, and deleting the Pods makes the runtime
    DEL everything."""
    cluster, cp = node.cluster, node.cluster.cp
    client = busybox_pod("client", cluster.namespace, cluster.node, "sleep 3600")
    server = busybox_pod(
        "server", cluster.namespace, cluster.node, f"nc -ll -p {PORT} -e hostname", port=PORT
    )
    for manifest in (client, server):
        cp.kubectl("create", "-f", "-", input=json.dumps(manifest))
    pods = {n: wait_pod_ready(cp, cluster.namespace, n) for n in ("client", "server")}
    sandboxes = {n: node.sandbox(p) for n, p in pods.items()}

    def both_published() -> dict[str, dict[str, Any]] | None:
        found = cluster.interfaces()
        return found if len(found) == 2 else None

    pnis = wait_for("a PodNetworkInterface per Pod", both_published)
    reserved = cluster.reservations()
    assert len(reserved) == 4, reserved  # two pods, dual stack
    for name, pod in pods.items():
        sandbox = sandboxes[name]
        # The Pod's IPs are the addresses loxi-cni reserved for its sandbox, v4 first.
        ips = [ip["ip"] for ip in pod["status"]["podIPs"]]
        assert pod["status"]["podIP"] == ips[0]
        assert sorted(ips) == sorted(ip for ip, c in reserved.items() if c == sandbox.sandbox_id)
        assert [ipaddress.ip_address(ip).version for ip in ips] == [4, 6]
        # The resource and the annotation say what the pod's netns holds (netlink).
        check_interface(cluster, sandbox, pnis[name])
        check_network_status(cluster, sandbox)
        held = sorted(str(ipaddress.ip_interface(a).ip) for a in sandbox.kernel()["ips"])
        assert held == sorted(ips)
        assert (ADD := ("ADD", sandbox.sandbox_id, sandbox.netns_path)) in node.calls(), ADD
    # ipMasq (on in deploy/'s template): each sandbox's addresses are masqueraded.
    assert masq.masqueraded_attachments(cluster.network) == {
        (s.sandbox_id, "eth0") for s in sandboxes.values()
    }
    assert cluster.status()["attachments"] == 2

    # Pod to pod, over each family, through the kubelet's streaming server.
    for ip in (ip["ip"] for ip in pods["server"]["status"]["podIPs"]):
        argv = ("exec", "-n", cluster.namespace, "client", "--", "nc", "-w", "5", ip, str(PORT))
        assert cp.kubectl(*argv).stdout.strip() == "server", f"client -> server at {ip}"

    # Deleting the Pods: the kubelet stops them, the CRI DELs each sandbox, then the Pods go.
    cp.kubectl(
        "delete", "pod", "client", "server", "-n", cluster.namespace, "--timeout=90s", timeout=100
    )

    def leftovers() -> dict[str, list[str]]:
        found = {
            "reservations": sorted(cluster.reservations()),
            "host veths": cluster.host_veths(),
            "interfaces": sorted(cluster.interfaces()),
            "records": sorted(p.name for p in (cluster.state_dir / "attachments").glob("*")),
            "masquerade": sorted(cid for cid, _ in masq.masqueraded_attachments(cluster.network)),
            "netns": [s.netns_path for s in sandboxes.values() if Path(s.netns_path).exists()],
            "libcni cache": [s.sandbox_id for s in sandboxes.values() if _cached(cluster, s)],
        }
        return {what: left for what, left in found.items() if left}

    deadline = time.monotonic() + 30
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == {}, "left after the Pods were deleted"
    for sandbox in sandboxes.values():  # and the runtime's DEL is what took it all
        assert ("DEL", sandbox.sandbox_id, sandbox.netns_path) in node.calls()
    status = cluster.status()
    assert status["attachments"] == 0
    # Every call reached the agent (none ran in-process): it served them all.
    assert status["requestsServed"] >= len(node.calls()) >= 4


def test_a_static_pod_is_matched_to_its_mirror_and_keeps_its_network(node: Node) -> None:
    """A static pod runs under its config hash (the UID the kubelet passes in K8S_POD_UID),
    while its mirror Pod in the API has a UID of its own and the hash in an annotation: the
    agent must see the mirror as that pod's (publish its interface, annotate it, apply the
    policies selecting it without making the ADD wait), never take the attachment for an
    orphan to release."""
    cluster, cp = node.cluster, node.cluster.cp
    policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "static-guard", "namespace": cluster.namespace},
        "spec": {"podSelector": {"matchLabels": {"app": "static"}}, "policyTypes": ["Ingress"]},
    }  # fmt: skip
    cp.kubectl("apply", "-f", "-", input=json.dumps(policy))
    manifest = busybox_pod("static", cluster.namespace, cluster.node, "sleep 3600")
    manifest["metadata"]["labels"] = {"app": "static"}
    del manifest["spec"]["nodeName"]  # the kubelet runs its static pods itself
    path = cp.static_pod_dir(cluster.node) / "static.json"
    path.write_text(json.dumps(manifest))
    mirror_name = f"static-{cluster.node}"
    try:
        mirror = wait_pod_ready(cp, cluster.namespace, mirror_name)
        config_hash = mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"]
        assert config_hash != mirror["metadata"]["uid"]
        # The runtime's ADD carried the static pod's own UID, the hash.
        records = [
            json.loads(p.read_text()) for p in (cluster.state_dir / "attachments").glob("*.json")
        ]
        (record,) = [r for r in records if f"K8S_POD_NAME={mirror_name}" in r["cni_args"]]
        assert f"K8S_POD_UID={config_hash}" in record["cni_args"]

        # Published for the mirror Pod, owned by it, and its network-status written.
        def published() -> dict[str, Any] | None:
            pni = cluster.interfaces().get(mirror_name)
            status = (pni or {}).get("status", {})
            selected = (status.get("policies") or {}).get("ingress") == ["static-guard"]
            return pni if status.get("state") == "Ready" and selected else None

        pni = wait_for("the static pod's PodNetworkInterface, naming its policy", published)
        owners = [o["uid"] for o in pni["metadata"]["ownerReferences"]]
        assert owners == [mirror["metadata"]["uid"]]
        assert wait_for("its network-status", lambda: cluster.network_status(mirror_name))
        # The ADD found its pod in the policy view at once (the mirror, by the static UID).
        assert f"{mirror_name}: ADD answered before" not in cluster.log.read_text()
        # Never an orphan: a resync later, nothing is counted for release, the pod still holds
        # its addresses.
        time.sleep(3)
        assert cluster.status()["kubernetes"]["orphans"] == 0
        assert {str(ipaddress.ip_interface(ip).ip) for ip in record["ips"]} == {
            str(ipaddress.ip_address(ip["ip"])) for ip in mirror["status"]["podIPs"]
        }
    finally:
        path.unlink(missing_ok=True)
        cp.kubectl("delete", "networkpolicy", "static-guard", "-n", cluster.namespace)

    def gone() -> bool:
        held = [c for c in cluster.reservations().values() if c == record_cid]
        return not held and mirror_name not in cluster.interfaces()

    record_cid = record["container_id"]
    wait_for("the static pod's attachment released by the runtime's DEL", gone, timeout=90)


def test_a_kubelet_pod_reaches_pods_on_simulated_nodes(node: Node, sim: SimCluster) -> None:
    """The kubelet node is one node of a cluster with simulated ones (--cross-node auto on
    every node): a Pod the kubelet runs reaches a pod on each simulated node, directly (the
    node on its subnet) and through vxlan (the node behind the router), in both families,
    and those pods reach it back; neither side sees a node's address instead of the pod's
    (ipMasq is on, and pod-to-pod traffic is exempt)."""
    cluster, cp = node.cluster, node.cluster.cp
    script = f"nc -ll -p {PORT} -e hostname"
    manifest = busybox_pod("joiner", cluster.namespace, cluster.node, script, port=PORT)
    cp.kubectl("create", "-f", "-", input=json.dumps(manifest))
    pod = wait_pod_ready(cp, cluster.namespace, "joiner")
    ips = {ipaddress.ip_address(i["ip"]).version: i["ip"] for i in pod["status"]["podIPs"]}
    direct, behind = sim.nodes
    nn = wait_for(
        "the kubelet node's NodeNetwork with both peers",
        lambda: (
            (n := cp.get_json("nodenetwork", cluster.node))["status"]["peers"]["programmed"] == 2
            and n
        ),
    )
    assert nn["status"]["peers"] | {"direct": 1, "vxlan": 1} == nn["status"]["peers"]
    assert nn["status"]["conditions"][0]["status"] == "True"
    for sim_node in (direct, behind):
        sim_pod = sim_node.pods[0]
        for version in (4, 6):
            server = OneShotServer(sim_pod.name, sim_pod.ips[version], sim_node.name)
            argv = ("exec", "-n", cluster.namespace, "joiner", "--",
                    "nc", "-w", "5", sim_pod.ips[version], str(server.port))  # fmt: skip
            assert cp.kubectl(*argv).stdout.strip() == sim_node.name, (sim_node.name, version)
            assert server.close() == ips[version]  # the Pod's own address: not masqueraded
            assert fetch(sim_pod.name, ips[version], PORT) == "joiner", (sim_node.name, version)
    cp.kubectl("delete", "pod", "joiner", "-n", cluster.namespace, "--timeout=60s", timeout=70)


def test_network_policy_on_the_kubelet_node(node: Node, sim: SimCluster) -> None:
    """The agent of the kubelet node enforces a NetworkPolicy for the Pods the kubelet runs:
    a friend Pod on the node (bridged) reaches the guarded Pod, a stranger Pod and a simulated
    node's pod (across nodes) do not, in both families; the kubelet's readiness probe (the
    node's own traffic) still passes; the PodNetworkInterface names the policy."""
    cluster, cp = node.cluster, node.cluster.cp
    ns, here = cluster.namespace, cluster.node
    guarded = busybox_pod("guarded", ns, here, f"nc -ll -p {PORT} -e hostname", port=PORT)
    guarded["metadata"]["labels"] = {"app": "guarded"}
    friend = busybox_pod("friend", ns, here, "sleep 3600")
    friend["metadata"]["labels"] = {"role": "friend"}
    stranger = busybox_pod("stranger", ns, here, "sleep 3600")
    for manifest in (guarded, friend, stranger):
        cp.kubectl("create", "-f", "-", input=json.dumps(manifest))
    pods = {n: wait_pod_ready(cp, ns, n) for n in ("guarded", "friend", "stranger")}
    policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "guard", "namespace": cluster.namespace},
        "spec": {"podSelector": {"matchLabels": {"app": "guarded"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}],
                              "ports": [{"port": PORT}]}]},
    }  # fmt: skip
    cp.kubectl("apply", "-f", "-", input=json.dumps(policy))
    ref = f"{cluster.namespace}/guard"

    def enforced() -> bool:
        status = cluster.status().get("networkPolicy") or {}
        return ref in (status.get("appliedPolicies") or {}) and bool(status.get("synced"))

    wait_for("the kubelet node's agent to enforce the policy", enforced)
    netns = {n: node.sandbox(p).netns for n, p in pods.items()}
    ips = {
        v: i["ip"]
        for i in pods["guarded"]["status"]["podIPs"]
        for v in [ipaddress.ip_address(i["ip"]).version]
    }
    sim_pod = sim.nodes[0].pods[0]
    sources = {"friend": netns["friend"], "stranger": netns["stranger"], "sim": sim_pod.name}
    probes = {
        (who, v): Probe(src, netns["guarded"], ips[v], PORT, "tcp")
        for who, src in sources.items()
        for v in (4, 6)
    }
    servers = Servers()
    try:
        got = run_probes(probes.values(), servers, timeout=1.0)
    finally:
        servers.close()
    reached = {key for key, p in probes.items() if got[p]}
    assert reached == {("friend", 4), ("friend", 6)}
    # the kubelet's probes come from the node: allowed, so the Pod stays Ready
    time.sleep(3)
    assert wait_pod_ready(cp, ns, "guarded")
    pni = wait_for(
        "the guarded Pod's interface to name its policy",
        lambda: next(
            (i for i in cluster.interfaces().values()
             if i["spec"]["podName"] == "guarded"
             and (i["status"].get("policies") or {}).get("ingress") == ["guard"]),
            None,
        ),
    )  # fmt: skip
    assert pni["status"]["policies"]["egress"] == []
    cp.kubectl("delete", "networkpolicy", "guard", "-n", cluster.namespace)
    cp.kubectl(
        "delete", "pod", "guarded", "friend", "stranger", "-n", cluster.namespace,
        "--timeout=90s", timeout=100,
    )  # fmt: skip
