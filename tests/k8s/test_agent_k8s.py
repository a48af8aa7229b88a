"""The agent in Kubernetes mode against a real control plane, with the test as the kubelet.

The deploy/ manifests are applied as they are (CRD, RBAC, ServiceAccount, ConfigMap,
DaemonSet); the agent runs on a private socket and state dir with a token of its
ServiceAccount, so every call it makes passes the real RBAC. No kubelet runs here: the test
creates Pods bound to a Node in the API, then runs their sandboxes as a runtime does, through
containerd's CRI (crictl runp with the Pod's metadata) or by exec'ing the installed plugin in a
netns of its own with the kubelet's CNI_ARGS, using the CNI config the agent wrote from the
Node's pod CIDRs. What the API shows is checked against what the kernel holds (netlink).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from pyroute2 import IPRoute, NetNS

from tests.runtimes import oci
from tests.runtimes.helpers import LOOPBACK
from tests.runtimes.runtimes import Containerd

from .controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = ("crd.yaml", "rbac.yaml", "configmap.yaml", "daemonset.yaml")
PLUGIN = os.environ.get("LOXI_CNI_BIN", "/opt/cni/bin/loxi-cni")
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
AGENT_SA = ("kube-system", "loxi-cni")
# Subnets other suites use: never these.
TAKEN = {ipaddress.ip_network(n) for n in ("10.99.0.0/24", "10.244.1.0/24")}

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def free_pod_cidr() -> ipaddress.IPv4Network:
    """A 10.97.X.0/24 no route of the host uses (a node's band of the cluster's pod network)."""
    routes = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "route", "show", "table", "all"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout
    )  # fmt: skip
    used = set(TAKEN)
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default" and dst[0].isdigit():
            used.add(ipaddress.ip_network(dst, strict=False))
    for third in range(10, 250):
        candidate = ipaddress.ip_network(f"10.97.{third}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise AssertionError("no free 10.97.X.0/24")


# ----------------------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def agent_kubeconfig(control_plane: ControlPlane) -> Path:
    """deploy/ applied as is; a kubeconfig holding a token of the agent's ServiceAccount."""
    for name in MANIFESTS:
        control_plane.kubectl("apply", "-f", str(DEPLOY / name))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/podnetworkinterfaces.loxicni.io",
    )  # fmt: skip
    token = control_plane.token_for(*AGENT_SA)
    return control_plane.kubeconfig_for_token(token)


def template_from_configmap() -> dict[str, Any]:
    """The CNI config template exactly as deploy/configmap.yaml ships it."""
    cm = yaml.safe_load((DEPLOY / "configmap.yaml").read_text())
    template: dict[str, Any] = json.loads(cm["data"]["cni-conf-template.json"])
    return template


@dataclass
class Cluster:
    """One test's node: a Node object, its network's names, and the agent serving it."""

    cp: ControlPlane
    kubeconfig: Path
    namespace: str
    workdir: Path
    node: str
    pod_cidrs: list[str]
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    grace_period: float = 120.0
    proc: subprocess.Popen[bytes] | None = None
    netns: list[str] = field(default_factory=list)

    # names of this test's network, so nothing collides with other tests on the host
    @property
    def network(self) -> str:
        return f"k8s-{self.tag}"

    @property
    def bridge(self) -> str:
        return f"lxk{self.tag}"

    @property
    def veth_prefix(self) -> str:
        return f"lk{self.tag[:4]}"

    @property
    def socket(self) -> str:
        return str(self.workdir / "run" / "agent.sock")

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "net.d"

    @property
    def conf_path(self) -> Path:
        return self.conf_dir / "10-loxi-cni.conflist"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "ipam"

    @property
    def log(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def env(self) -> dict[str, str]:
        """What a plugin exec needs to reach this agent (or, with it down, share its state)."""
        return {"LOXI_CNI_SOCKET": self.socket, "LOXI_CNI_STATE_DIR": str(self.state_dir)}

    def write_template(self) -> Path:
        """deploy/'s template, with this test's names and store (the portmap entry dropped:
        the sandboxes here map no ports)."""
        template = template_from_configmap()
        template["name"] = self.network
        plugin = next(p for p in template["plugins"] if p["type"] == "loxi-cni")
        plugin.update(bridge=self.bridge, vethPrefix=self.veth_prefix)
        plugin["ipam"]["dataDir"] = str(self.data_dir)
        template["plugins"] = [plugin]
        path = self.workdir / "template.json"
        path.write_text(json.dumps(template))
        return path

    # -- the agent
    def start_agent(self) -> None:
        template = self.write_template()
        argv = [
            PLUGIN, "agent", "--socket", self.socket, "--metrics", "off",
            "--kubeconfig", str(self.kubeconfig), "--node-name", self.node,
            "--cni-conf-dir", str(self.conf_dir), "--cni-conf-template", str(template),
            "--grace-period", str(self.grace_period), "--resync", "2",
        ]  # fmt: skip
        env = {**os.environ, **self.env}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        wait_for("the agent's Kubernetes mode to be synced", self._synced, timeout=30)

    def _synced(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent exited:\n{self.log.read_text()[-4000:]}")
        kube = self.status().get("kubernetes", {})
        return bool(kube.get("podsSynced")) and bool(kube.get("syncs"))

    def status(self) -> dict[str, Any]:
        proc = subprocess.run(
            [PLUGIN, "status", "--json", "--socket", self.socket],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        try:
            return dict(json.loads(proc.stdout))
        except ValueError:
            return {}

    def kill_agent(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop_agent(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    # -- the API
    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, check=check)

    def create_pod(self, name: str, node: str | None = None) -> dict[str, Any]:
        """A Pod bound to the node (the scheduler's part: none runs here)."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "nodeName": node or self.node,
                "containers": [{"name": "app", "image": "loxi.local/busybox:rt"}],
            },
        }
        out = self.cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(pod)).stdout
        created: dict[str, Any] = json.loads(out)
        return created

    def force_delete_pod(self, name: str) -> None:
        """What the kubelet does once the sandbox is gone (or a user's --force)."""
        self.kubectl("delete", "pod", name, "-n", self.namespace, "--grace-period=0", "--force")

    def get_pod(self, name: str) -> dict[str, Any] | None:
        res = self.kubectl("get", "pod", name, "-n", self.namespace, "-o", "json", check=False)
        return dict(json.loads(res.stdout)) if res.returncode == 0 else None

    def interfaces(self) -> dict[str, dict[str, Any]]:
        """This test's PodNetworkInterfaces, by pod name (one interface per pod here)."""
        items = self.cp.get_json("podnetworkinterfaces", "-n", self.namespace)["items"]
        return {i["spec"]["podName"]: i for i in items}

    def network_status(self, name: str) -> list[dict[str, Any]] | None:
        pod = self.get_pod(name)
        if pod is None:
            return None
        raw = (pod["metadata"].get("annotations") or {}).get(NETWORK_STATUS)
        return json.loads(raw) if raw else None

    # -- the runtime's part
    def conf(self) -> dict[str, Any]:
        """What libcni sends loxi-cni for the conflist the agent wrote."""
        conflist = json.loads(self.conf_path.read_text())
        (plugin,) = conflist["plugins"]
        return {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}

    def cni(self, command: str, pod: Sandbox, *, netns: str | None = None) -> dict[str, Any]:
        """Exec the installed plugin as containerd's CRI does for a pod sandbox."""
        env = {
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.sandbox_id,
            "CNI_NETNS": pod.netns_path if netns is None else netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": pod.cni_args,
            **self.env,
        }
        proc = subprocess.run(
            [PLUGIN], input=json.dumps(self.conf()).encode(), env=env,
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, f"{command}: {proc.stdout!r} {proc.stderr!r}"
        return dict(json.loads(proc.stdout)) if proc.stdout.strip() else {}

    def run_sandbox(self, name: str) -> Sandbox:
        """A Pod in the API and its sandbox: a netns, and the plugin's ADD for it."""
        pod = self.create_pod(name)
        netns = f"loxk-{self.tag}-{len(self.netns)}"
        subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
        self.netns.append(netns)
        sandbox = Sandbox(
            name=name,
            namespace=self.namespace,
            uid=pod["metadata"]["uid"],
            sandbox_id=uuid.uuid4().hex + uuid.uuid4().hex,
            netns=netns,
        )
        sandbox.result = self.cni("ADD", sandbox)
        return sandbox

    def stop_sandbox(self, sandbox: Sandbox) -> None:
        """StopPodSandbox + RemovePodSandbox: DEL with the netns, the netns gone, DEL again."""
        self.cni("DEL", sandbox)
        subprocess.run(["ip", "netns", "del", sandbox.netns], check=False, timeout=30)
        self.cni("DEL", sandbox, netns="")

    # -- the host
    def reservations(self) -> dict[str, str]:
        directory = self.data_dir / self.network
        if not directory.is_dir():
            return {}
        return {
            p.name: p.read_bytes().decode().splitlines()[0]
            for p in directory.iterdir()
            if p.is_file() and p.name != "lock" and not p.name.startswith("last_reserved_ip")
        }

    def host_veths(self) -> list[str]:
        with IPRoute() as ipr:
            names = [m.get("IFLA_IFNAME") for m in ipr.get_links()]
        return sorted(n for n in names if n and n.startswith(self.veth_prefix))

    def cleanup(self) -> None:
        """Whatever a failed test left: GC with no valid attachment releases it all (address,
        masquerade entry, host veth, record), then the netns, links and the Node go."""
        self.stop_agent()
        if self.conf_path.exists():
            env = {
                "PATH": os.environ["PATH"],
                "CNI_COMMAND": "GC",
                "CNI_PATH": "/opt/cni/bin",
                "LOXI_CNI_STATE_DIR": str(self.state_dir),
                "LOXI_CNI_NO_AGENT": "1",
            }
            conf = {**self.conf(), "cniVersion": "1.1.0"}
            subprocess.run(
                [PLUGIN], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60
            )
        for netns in self.netns:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
        for name in self.host_veths():
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)
        self.kubectl("delete", "node", self.node, "--wait=false", check=False)


@dataclass
class Sandbox:
    name: str
    namespace: str
    uid: str
    sandbox_id: str
    netns: str
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def cni_args(self) -> str:
        return (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={self.sandbox_id};K8S_POD_UID={self.uid}"
        )

    def kernel(self) -> dict[str, Any]:
        """eth0 as the pod's netns holds it: MAC, MTU, addresses, the host peer's ifindex."""
        with NetNS(self.netns) as ns:
            (link,) = ns.get_links(ifname="eth0")
            addrs = ns.get_addr(index=link["index"])
            return {
                "mac": link.get("IFLA_ADDRESS"),
                "mtu": link.get("IFLA_MTU"),
                "peer": link.get("IFLA_LINK"),
                "ips": sorted(
                    f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                    for a in addrs
                    if not str(a.get("IFA_ADDRESS")).startswith("fe80")
                ),
            }


def host_link(name: str) -> dict[str, Any] | None:
    with IPRoute() as ipr:
        found = ipr.get_links(ifname=name) if ipr.link_lookup(ifname=name) else []
        if not found:
            return None
        link = found[0]
        master = link.get("IFLA_MASTER")
        bridge = ipr.get_links(master)[0].get("IFLA_IFNAME") if master else None
        return {"index": link["index"], "mac": link.get("IFLA_ADDRESS"), "bridge": bridge}


@pytest.fixture
def cluster(
    control_plane: ControlPlane, agent_kubeconfig: Path, namespace: str, tmp_path: Path
) -> Iterator[Cluster]:
    v4 = free_pod_cidr()
    v6 = ipaddress.ip_network(f"fd97:{v4.network_address.packed[2]:x}::/64")
    node = f"node-{uuid.uuid4().hex[:8]}"
    control_plane.create_node(node, [str(v4), str(v6)])
    c = Cluster(control_plane, agent_kubeconfig, namespace, tmp_path, node, [str(v4), str(v6)])
    try:
        yield c
    finally:
        c.cleanup()


# ------------------------------------------------------------------------------- the tests
def test_cni_config_written_from_the_node_pod_cidrs(cluster: Cluster) -> None:
    cluster.start_agent()
    conflist = json.loads(wait_for("the CNI config", lambda: cluster.conf_path.exists() and
                                   cluster.conf_path.read_text()))  # fmt: skip
    (plugin,) = conflist["plugins"]
    assert plugin["ipam"]["ranges"] == [[{"subnet": c}] for c in cluster.pod_cidrs]
    assert plugin["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    # Every other field of deploy/'s template is kept.
    shipped = next(p for p in template_from_configmap()["plugins"] if p["type"] == "loxi-cni")
    for key in ("isGateway", "ipMasq", "hairpinMode"):
        assert plugin[key] == shipped[key]
    assert conflist["cniVersion"] == "1.0.0"
    assert (plugin["bridge"], conflist["name"]) == (cluster.bridge, cluster.network)
    assert cluster.conf_path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in cluster.conf_dir.iterdir()] == [cluster.conf_path.name]
    status = cluster.status()["kubernetes"]
    assert status["podCIDRs"] == cluster.pod_cidrs and status["cniConfigError"] == ""

    # An operator's edit of the template (a ConfigMap update) reaches the file at the resync.
    template = json.loads((cluster.workdir / "template.json").read_text())
    template["plugins"][0]["mtu"] = 1400
    (cluster.workdir / "template.json").write_text(json.dumps(template))
    wait_for("the template's new mtu in the config",
             lambda: json.loads(cluster.conf_path.read_text())["plugins"][0].get("mtu") == 1400,
             timeout=15)  # fmt: skip
    assert json.loads(cluster.conf_path.read_text())["plugins"][0]["ipam"]["ranges"] == [
        [{"subnet": c}] for c in cluster.pod_cidrs
    ]


def _check_interface(cluster: Cluster, pod: Sandbox, pni: dict[str, Any]) -> None:
    """The resource says what the kernel holds for this pod."""
    kernel = pod.kernel()
    spec = pni["spec"]
    assert spec["podName"] == pod.name and spec["podUID"] == pod.uid
    assert spec["node"] == cluster.node
    assert spec["containerID"] == pod.sandbox_id
    assert spec["interface"] == "eth0"
    assert spec["network"] == cluster.network and spec["bridge"] == cluster.bridge
    assert spec["vlan"] == 0
    assert spec["mac"] == kernel["mac"] and spec["mtu"] == kernel["mtu"]
    assert sorted(spec["ips"]) == kernel["ips"]
    assert len(spec["ips"]) == 2  # dual stack: one address from each of the Node's pod CIDRs
    for ip, cidr in zip(spec["ips"], cluster.pod_cidrs, strict=True):
        assert ipaddress.ip_interface(ip).ip in ipaddress.ip_network(cidr)
    assert spec["gateways"] == [str(ipaddress.ip_network(c)[1]) for c in cluster.pod_cidrs]
    veth = host_link(spec["hostInterface"])
    assert veth is not None, f"no host link {spec['hostInterface']}"
    assert veth["index"] == kernel["peer"] and veth["bridge"] == cluster.bridge
    assert pni["status"]["state"] == "Ready"
    (owner,) = pni["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", pod.name, pod.uid)
    assert pni["metadata"]["labels"]["loxicni.io/node"] == cluster.node
    # What the runtime got from ADD agrees too.
    result_ips = sorted(ip["address"] for ip in pod.result["ips"])
    assert result_ips == kernel["ips"]
    for address in kernel["ips"]:
        assert cluster.reservations()[str(ipaddress.ip_interface(address).ip)] == pod.sandbox_id


def _check_network_status(cluster: Cluster, pod: Sandbox) -> None:
    kernel = pod.kernel()
    (entry,) = wait_for(f"network-status of {pod.name}", lambda: cluster.network_status(pod.name))
    assert entry["name"] == cluster.network and entry["interface"] == "eth0"
    assert entry["default"] is True
    assert sorted(entry["ips"]) == sorted(str(ipaddress.ip_interface(i).ip) for i in kernel["ips"])
    assert entry["mac"] == kernel["mac"] and entry["mtu"] == kernel["mtu"]
    assert entry["gateway"] == [str(ipaddress.ip_network(c)[1]) for c in cluster.pod_cidrs]


def test_pods_get_interfaces_and_network_status_then_lose_them(cluster: Cluster) -> None:
    cluster.start_agent()
    wait_for("the CNI config", cluster.conf_path.exists)
    elsewhere = cluster.create_pod("elsewhere", node="some-other-node")
    pods = [cluster.run_sandbox(f"web-{i}") for i in range(2)]

    pnis = wait_for("a PodNetworkInterface per pod",
                    lambda: (i := cluster.interfaces()) and len(i) == 2 and i)  # fmt: skip
    for pod in pods:
        _check_interface(cluster, pod, pnis[pod.name])
        _check_network_status(cluster, pod)
    assert len({p["spec"]["hostInterface"] for p in pnis.values()}) == 2
    # Only this node's Pods are watched: the server-side field selector.
    wait_for("the two Pods of the node in the watch",
             lambda: cluster.status()["kubernetes"]["podsWatched"] == 2)  # fmt: skip
    assert cluster.network_status(elsewhere["metadata"]["name"]) is None

    # `kubectl get podnetworkinterfaces -o wide` reads like a table of the node's veths.
    table = cluster.kubectl("get", "podnetworkinterfaces", "-n", cluster.namespace, "-o", "wide")
    head, *rows = table.stdout.splitlines()
    assert head.split() == [
        "NAME", "POD", "INTERFACE", "VETH", "IPS", "MAC", "STATE", "NODE", "BRIDGE", "VLAN",
        "MTU", "GATEWAY", "NETWORK", "CONTAINER", "AGE",
    ]  # fmt: skip
    for pod in pods:
        spec = pnis[pod.name]["spec"]
        (row,) = [r.split() for r in rows if r.split()[1] == pod.name]
        assert row[2:4] == ["eth0", spec["hostInterface"]]
        assert spec["ips"][0] in row[4] and row[5] == spec["mac"] and row[6] == "Ready"
        assert row[7:11] == [cluster.node, cluster.bridge, "0", str(spec["mtu"])]

    # The kubelet stops and removes the first sandbox, then deletes its Pod.
    gone = pods[0]
    cluster.stop_sandbox(gone)
    wait_for("the PodNetworkInterface of a DELeted sandbox to go",
             lambda: gone.name not in cluster.interfaces())  # fmt: skip
    cluster.force_delete_pod(gone.name)
    assert pods[1].sandbox_id in cluster.reservations().values()
    assert gone.sandbox_id not in cluster.reservations().values()
    assert host_link(pnis[gone.name]["spec"]["hostInterface"]) is None
    assert list(cluster.interfaces()) == [pods[1].name]

    # A Pod deleted through the API with the runtime still to DEL: the kubelet's order.
    last = pods[1]
    cluster.kubectl("delete", "pod", last.name, "-n", cluster.namespace, "--wait=false")
    cluster.stop_sandbox(last)
    cluster.force_delete_pod(last.name)
    wait_for("no PodNetworkInterface left", lambda: cluster.interfaces() == {})
    assert cluster.reservations() == {} and cluster.host_veths() == []
    assert cluster.status()["attachments"] == 0


def test_agent_killed_and_restarted_reconciles(cluster: Cluster) -> None:
    cluster.start_agent()
    wait_for("the CNI config", cluster.conf_path.exists)
    a, b = (cluster.run_sandbox(n) for n in ("dead-netns", "drop"))
    wait_for("two PodNetworkInterfaces", lambda: len(cluster.interfaces()) == 2)

    cluster.kill_agent()
    # While the agent is down the plugin runs in-process (same state dir): b's sandbox is
    # removed (its Pod stays: a sandbox being recreated), c's sandbox is created. The API
    # learns nothing of either.
    cluster.stop_sandbox(b)
    c = cluster.run_sandbox("late")
    # And a's netns dies without any DEL (the pair goes with it): reconcile's case.
    subprocess.run(["ip", "netns", "del", a.netns], check=True, timeout=30)
    wait_for("a's veth to go with its netns", lambda: len(cluster.host_veths()) == 1)
    assert set(cluster.interfaces()) == {"dead-netns", "drop"}
    assert a.sandbox_id in cluster.reservations().values()

    cluster.start_agent()
    wait_for("the API to match the node after the restart",
             lambda: set(cluster.interfaces()) == {"late"}, timeout=30)  # fmt: skip
    _check_interface(cluster, c, cluster.interfaces()["late"])
    _check_network_status(cluster, c)
    assert list(cluster.reservations().values()) == [c.sandbox_id, c.sandbox_id]
    assert cluster.status()["attachments"] == 1


def test_pod_gone_without_del_is_released_after_the_grace_period(cluster: Cluster) -> None:
    cluster.grace_period = 4.0
    cluster.start_agent()
    wait_for("the CNI config", cluster.conf_path.exists)
    lost, kept = (cluster.run_sandbox(n) for n in ("lost", "kept"))
    pnis = wait_for("two PodNetworkInterfaces", lambda: (i := cluster.interfaces()) and
                    len(i) == 2 and i)  # fmt: skip
    veth = pnis["lost"]["spec"]["hostInterface"]

    # The Pod goes (a user's force delete), and the runtime never calls DEL.
    deleted_at = time.monotonic()
    cluster.force_delete_pod(lost.name)
    time.sleep(1.0)
    # Within the grace period nothing is taken: the runtime may still be about to DEL.
    assert host_link(veth) is not None
    assert lost.sandbox_id in cluster.reservations().values()

    wait_for("the orphan's host veth to be deleted", lambda: host_link(veth) is None, timeout=30)
    assert time.monotonic() - deleted_at >= cluster.grace_period
    wait_for("the orphan's address to be released",
             lambda: lost.sandbox_id not in cluster.reservations().values())  # fmt: skip
    wait_for("the orphan's PodNetworkInterface to go", lambda: set(cluster.interfaces()) ==
             {"kept"})  # fmt: skip
    assert cluster.status()["kubernetes"]["released"] == 1
    assert cluster.status()["attachments"] == 1
    # The Pod that still exists keeps everything.
    _check_interface(cluster, kept, cluster.interfaces()["kept"])
    # A late DEL from the runtime is still answered with success.
    cluster.cni("DEL", lost)


RBAC_ALLOWED = [
    ("get", "pods"), ("list", "pods"), ("watch", "pods"),
    ("patch", "pods", "--subresource=status"),
    ("get", "nodes"), ("list", "nodes"), ("watch", "nodes"),
    ("get", "podnetworkinterfaces.loxicni.io"), ("list", "podnetworkinterfaces.loxicni.io"),
    ("create", "podnetworkinterfaces.loxicni.io"), ("patch", "podnetworkinterfaces.loxicni.io"),
    ("delete", "podnetworkinterfaces.loxicni.io"),
]  # fmt: skip
RBAC_DENIED = [
    ("patch", "pods"), ("update", "pods"), ("create", "pods"), ("delete", "pods"),
    ("update", "pods", "--subresource=status"), ("create", "pods", "--subresource=exec"),
    ("create", "pods", "--subresource=eviction"),
    ("patch", "nodes"), ("update", "nodes"), ("delete", "nodes"),
    ("patch", "nodes", "--subresource=status"),
    ("get", "secrets"), ("list", "secrets"), ("get", "configmaps"), ("list", "serviceaccounts"),
    ("create", "serviceaccounts", "--subresource=token"),
    ("deletecollection", "podnetworkinterfaces.loxicni.io"),
    ("update", "podnetworkinterfaces.loxicni.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "daemonsets.apps"), ("create", "customresourcedefinitions"),
    ("list", "events"),
]  # fmt: skip


def test_rbac_grants_the_agent_what_it_needs_and_nothing_more(
    control_plane: ControlPlane, agent_kubeconfig: Path, namespace: str
) -> None:
    def can(*check: str) -> bool:
        res = control_plane.kubectl(
            "auth", "can-i", *check, "-n", namespace, kubeconfig=agent_kubeconfig, check=False
        )
        assert res.stdout.strip() in ("yes", "no"), res.stderr
        return res.stdout.strip() == "yes"

    whoami = json.loads(
        control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=agent_kubeconfig).stdout
    )
    assert whoami["status"]["userInfo"]["username"] == "system:serviceaccount:kube-system:loxi-cni"
    assert [c for c in RBAC_ALLOWED if not can(*c)] == []
    assert [c for c in RBAC_DENIED if can(*c)] == []
    # And the API agrees with can-i when the token is used for real.
    denied = control_plane.kubectl(
        "get", "secrets", "-n", namespace, kubeconfig=agent_kubeconfig, check=False
    )
    assert denied.returncode != 0 and "Forbidden" in denied.stderr


def _pni(namespace: str, **spec: Any) -> dict[str, Any]:
    good = {
        "podName": "web-0",
        "podUID": str(uuid.uuid4()),
        "node": "node-a",
        "network": "pods",
        "containerID": "c0ffee",
        "interface": "eth0",
        "hostInterface": "loxi0123456789a",
        "mac": "0a:58:0a:f4:01:05",
        "ips": ["10.244.1.5/24", "fd00:244:1::5/64"],
        "gateways": ["10.244.1.1"],
        "bridge": "cni0",
        "vlan": 0,
        "mtu": 1500,
    }
    good.update(spec)
    return {
        "apiVersion": "loxicni.io/v1alpha1",
        "kind": "PodNetworkInterface",
        "metadata": {"name": f"web-0-eth0-{uuid.uuid4().hex[:6]}", "namespace": namespace},
        "spec": {k: v for k, v in good.items() if v is not None},
        "status": {"state": "Ready"},
    }


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"mac": "0A:58:zz:f4:01:05"}, "spec.mac"),
        ({"ips": ["10.244.1.300/24"]}, "prefix length"),
        ({"ips": ["10.244.1.5"]}, "prefix length"),
        ({"ips": []}, "spec.ips"),
        ({"gateways": ["not-an-ip"]}, "must be an IP address"),
        ({"vlan": 4095}, "spec.vlan"),
        ({"mtu": 10}, "spec.mtu"),
        ({"interface": "eth0/../x"}, "spec.interface"),
        ({"hostInterface": "a-name-longer-than-15"}, "spec.hostInterface"),
        ({"podUID": "not-a-uid"}, "spec.podUID"),
        ({"podUID": None}, "spec.podUID"),
        ({"state": "Weird"}, "status.state"),
    ],
)
def test_crd_validation_rejects_bad_objects(
    control_plane: ControlPlane,
    agent_kubeconfig: Path,
    namespace: str,
    change: dict[str, Any],
    complaint: str,
) -> None:
    assert agent_kubeconfig.exists()  # the CRD is installed
    state = change.pop("state", None)
    obj = _pni(namespace, **change)
    if state:
        obj["status"]["state"] = state
    res = control_plane.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False
    )
    assert res.returncode != 0, f"accepted: {obj}"
    assert "Invalid" in res.stderr and complaint in res.stderr, res.stderr


def test_crd_validation_accepts_what_the_agent_writes(
    control_plane: ControlPlane, agent_kubeconfig: Path, namespace: str
) -> None:
    assert agent_kubeconfig.exists()
    obj = _pni(namespace)
    control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj))
    del obj["spec"]["mac"], obj["spec"]["mtu"], obj["spec"]["gateways"]  # optional fields
    control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj))


def test_deploy_manifests_are_what_a_cluster_runs(
    control_plane: ControlPlane, agent_kubeconfig: Path
) -> None:
    """The applied objects, read back from the API: the DaemonSet runs the agent on the host
    network as its ServiceAccount, with the template from the ConfigMap."""
    assert agent_kubeconfig.exists()
    ds = control_plane.get_json("daemonset", "loxi-cni", "-n", "kube-system")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["serviceAccountName"] == "loxi-cni"
    assert spec["priorityClassName"] == "system-node-critical"
    (init,) = spec["initContainers"]
    assert init["command"] == ["/opt/loxi-cni/install-host.sh"]
    (agent,) = spec["containers"]
    assert "--in-cluster" in agent["args"]
    template_arg = next(a for a in agent["args"] if a.startswith("--cni-conf-template="))
    mount = next(m for m in agent["volumeMounts"] if m["name"] == "template")
    assert template_arg.split("=", 1)[1].startswith(mount["mountPath"] + "/")
    volume = next(v for v in spec["volumes"] if v["name"] == "template")
    assert volume["configMap"]["name"] == "loxi-cni-config"
    cm = control_plane.get_json("configmap", "loxi-cni-config", "-n", "kube-system")
    assert json.loads(cm["data"]["cni-conf-template.json"])["plugins"][0]["type"] == "loxi-cni"
    host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert {"/opt", "/etc/cni/net.d", "/run/loxi-cni", "/var/lib/loxi-cni"} <= host_paths
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


# ------------------------------------------------------------------ the kubelet's own path
@pytest.fixture(scope="module")
def pause_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci.Image]:
    """The sandbox image CRI needs (no registry here to pull registry.k8s.io/pause from)."""
    directory = tmp_path_factory.mktemp("pause")
    yield oci.pause_image(directory / "pause.tar", "loxi.local/pause:rt", directory)


def test_pod_sandboxes_through_containerd_cri(
    cluster: Cluster, pause_image: oci.Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """containerd's CRI reads the config the agent wrote and runs loxi-cni for a sandbox with
    the Pod's metadata, exactly as for a kubelet; the API then shows that sandbox."""
    cluster.start_agent()
    wait_for("the CNI config", cluster.conf_path.exists)
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    shutil.copy2(PLUGIN, bin_dir / "loxi-cni")
    shutil.copy2(LOOPBACK, bin_dir / "loopback")
    for key, value in cluster.env.items():  # containerd passes its environment to plugins
        monkeypatch.setenv(key, value)
    ctrd = Containerd(tmp_path / "containerd", bin_dir, cluster.conf_dir, f"/loxik-{cluster.tag}")
    try:
        ctrd.start()
        ctrd.import_image(pause_image, namespace="k8s.io")
        pod = cluster.create_pod("cri-0")
        config = {
            "metadata": {
                "name": "cri-0",
                "namespace": cluster.namespace,
                "uid": pod["metadata"]["uid"],
                "attempt": 0,
            },
            "hostname": "cri-0",
            "log_directory": str(tmp_path / "pod-logs"),
            "linux": {"cgroup_parent": ctrd.cgroup_parent},
        }
        (tmp_path / "pod.json").write_text(json.dumps(config))
        pod_id = ctrd.crictl("runp", str(tmp_path / "pod.json"), timeout=120).stdout.strip()
        status = ctrd.inspectp(pod_id)
        netns_path = next(
            ns["path"]
            for ns in status["info"]["runtimeSpec"]["linux"]["namespaces"]
            if ns["type"] == "network"
        )
        sandbox = Sandbox(
            name="cri-0",
            namespace=cluster.namespace,
            uid=pod["metadata"]["uid"],
            sandbox_id=pod_id,
            netns=Path(netns_path).name,
        )
        kernel = sandbox.kernel()
        reported = [status["status"]["network"]["ip"]] + [
            a["ip"] for a in status["status"]["network"]["additionalIps"]
        ]
        assert sorted(reported) == sorted(str(ipaddress.ip_interface(i).ip) for i in kernel["ips"])

        pni = wait_for("the sandbox's PodNetworkInterface",
                       lambda: cluster.interfaces().get("cri-0"))  # fmt: skip
        sandbox.result = {"ips": [{"address": a} for a in kernel["ips"]]}
        _check_interface(cluster, sandbox, pni)
        _check_network_status(cluster, sandbox)

        ctrd.crictl("stopp", pod_id, timeout=60)
        ctrd.crictl("rmp", pod_id, timeout=60)
        wait_for("the PodNetworkInterface to go with the sandbox",
                 lambda: cluster.interfaces() == {})  # fmt: skip
        cluster.force_delete_pod("cri-0")
        assert cluster.reservations() == {} and cluster.host_veths() == []
    finally:
        ctrd.close()
