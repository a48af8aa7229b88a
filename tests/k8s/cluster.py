"""The agent's side of the Kubernetes tests, shared by the suites that play the kubelet
(test_agent_k8s) and the one where a real kubelet runs (test_kubelet_e2e): one node's network
and the agent serving it (`Cluster`), a pod sandbox's view from its netns (`Sandbox`), and the
checks that what the API shows is what the kernel holds.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyroute2 import IPRoute, NetNS

from loxicni.net import masq
from loxicni.net.policy_table import PolicyTable
from tests.support.agent import LocalAgent
from tests.support.host import delete_links, links, unrouted
from tests.support.ipam import reservation_owners
from tests.support.plugin import PLUGIN
from tests.support.waiting import wait_for

from .controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
AGENT_SA = ("kube-system", "loxi-cni")
BUSYBOX = "loxi.local/busybox:rt"  # tests.runtimes.oci.busybox_image, imported where it runs


def free_pod_cidr() -> ipaddress.IPv4Network:
    """A 10.97.X.0/24 no route of the host uses (a node's band of the cluster's pod network)."""
    cidr = unrouted(ipaddress.IPv4Network(f"10.97.{third}.0/24") for third in range(10, 250))
    if cidr is None:
        raise AssertionError("no free 10.97.X.0/24")
    return cidr


def apply_deploy(cp: ControlPlane) -> Path:
    """deploy/ applied as is; a kubeconfig holding a token of the agent's ServiceAccount that
    names no node: RBAC's view of the agent (deploy/rbac.yaml's admission policy lets it write
    nothing; an agent runs on `node_agent_kubeconfig`)."""
    cp.kubectl("apply", "-f", str(DEPLOY))  # as users do: the directory
    cp.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/podnetworkinterfaces.loxicni.io", "crd/nodenetworks.loxicni.io",
    )  # fmt: skip
    return cp.kubeconfig_for_token(cp.token_for(*AGENT_SA))


_node_kubeconfigs: dict[tuple[str, str], Path] = {}


def node_agent_kubeconfig(cp: ControlPlane, node: str) -> Path:
    """A kubeconfig of the agent's ServiceAccount for the agent of `node` (which must exist):
    its token names the node, as the token of the DaemonSet's pod on it does, so the admission
    policy lets it write for that node only."""
    key = (cp.server, node)
    if key not in _node_kubeconfigs:
        _node_kubeconfigs[key] = cp.kubeconfig_for_token(cp.token_for(*AGENT_SA, node=node))
    return _node_kubeconfigs[key]


def require(missing: Sequence[str], what: str) -> None:
    """Skip when prerequisites are `missing`, but fail under LOXI_K8S_REQUIRED=1 (`make e2e`):
    there a missing tool is a broken set-up, never a reason to pass."""
    if not missing:
        return
    msg = f"{what} needs {', '.join(missing)}: run `make e2e` (install, k8s-deps, runtimes-deps)"
    if os.environ.get("LOXI_K8S_REQUIRED") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def masq_table(ns: str | None = None) -> list[dict[str, Any]] | None:
    """loxi-cni's nftables table (ipMasq: deploy/'s template turns it on) as `nft -j` lists
    it in netns `ns` (None: the host's), or None when there is none."""
    wrapper = [] if ns is None else ["ip", "netns", "exec", ns]
    proc = subprocess.run(
        [*wrapper, "nft", "-j", "list", "table", "inet", masq.TABLE],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    objs: list[dict[str, Any]] = json.loads(proc.stdout)["nftables"]
    return objs


def run_dir_left(run_dir: Path) -> list[str]:
    """What is left in a run dir after `loxi-cni uninstall`: nothing, but for the lock of the
    host's nftables table while others' entries keep the table (other tests on this host)."""
    left = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    return [] if left == ["nft.lock"] and masq_table() is not None else left


def drop_unused_masq_table() -> None:
    """Delete loxi-cni's nftables table if no attachment has an element in it: the plugin
    makes it on first use and keeps it. Under the plugin's lock, so no ADD comes in between
    (and one that comes later makes it again)."""
    with masq._locked():
        objs = masq_table()
        if objs is not None and not any(o.get("set", {}).get("elem") for o in objs):
            subprocess.run(
                ["nft", "delete", "table", "inet", masq.TABLE], capture_output=True, timeout=30
            )


def template_from_configmap() -> dict[str, Any]:
    """The CNI config template exactly as deploy/configmap.yaml ships it."""
    cm = yaml.safe_load((DEPLOY / "configmap.yaml").read_text())
    template: dict[str, Any] = json.loads(cm["data"]["cni-conf-template.json"])
    return template


def node_ready(cp: ControlPlane, node: str) -> bool:
    conditions = cp.get_json("node", node)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def busybox_pod(
    name: str, namespace: str, node: str, script: str, port: int | None = None
) -> dict[str, Any]:
    """A busybox Pod bound to `node` (no scheduler involved), for a real kubelet to run. Its
    shell, PID 1, exits on TERM, so a deletion takes a moment, not the grace period. With
    `port`, it is Ready once the kubelet connects to it there, from the host through the
    bridge."""
    container: dict[str, Any] = {
        "name": name,
        "image": BUSYBOX,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", f"trap 'exit 0' TERM; {script} & wait"],
    }
    if port is not None:
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 1}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 10,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [container],
        },
    }


def wait_pod_ready(
    cp: ControlPlane, namespace: str, name: str, timeout: float = 120
) -> dict[str, Any]:
    """The Pod once Running and Ready, with its IPs; a Pod that failed ends the wait at once."""

    def ready() -> dict[str, Any] | None:
        res = cp.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
        pod = json.loads(res.stdout) if res.returncode == 0 else {}
        status: dict[str, Any] = pod.get("status", {})
        assert status.get("phase") not in ("Failed", "Succeeded"), f"{name}: {status}"
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        running = status.get("phase") == "Running" and status.get("podIP")
        return pod if running and conditions.get("Ready") == "True" else None

    return wait_for(f"Pod {name} Running and Ready", ready, timeout=timeout, interval=0.5)


@dataclass
class Cluster(LocalAgent):
    """One test's node: a Node object, its network's names, and the agent serving it."""

    cp: ControlPlane
    namespace: str
    workdir: Path
    node: str
    pod_cidrs: list[str]
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    grace_period: float = 120.0
    extra_args: list[str] = field(default_factory=list)  # more agent options (--cross-node ...)
    proc: subprocess.Popen[bytes] | None = None
    netns: list[str] = field(default_factory=list)
    masq_table_existed: bool = field(default_factory=lambda: masq_table() is not None)
    # Network policy in the host's netns only where a test asks: agents of other tests run
    # there too, and the policy table a node keeps outlives its agent.
    network_policy: bool = False
    policy_table_existed: bool = field(default_factory=lambda: PolicyTable().exists())

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
    def kubeconfig(self) -> Path:
        """What the agent reaches the API with (minted when first asked: the Node exists)."""
        return node_agent_kubeconfig(self.cp, self.node)

    @property
    def env(self) -> dict[str, str]:
        """What a plugin exec needs to reach this agent (or, with it down, share its state)."""
        return {"LOXI_CNI_SOCKET": self.socket, "LOXI_CNI_STATE_DIR": str(self.state_dir)}

    # -- the agent
    def start_agent(self) -> None:
        self.launch_agent()
        wait_for("the agent's Kubernetes mode to be synced", self._synced, timeout=30)

    def launch_agent(self) -> None:
        """Start the agent and return at once (``start_agent`` also waits for it to sync).
        Its template is deploy/'s, with this test's names and store (the portmap entry
        dropped: the sandboxes here map no ports)."""
        template = template_from_configmap()
        plugin = next(p for p in template["plugins"] if p["type"] == "loxi-cni")
        plugin.update(bridge=self.bridge, vethPrefix=self.veth_prefix)
        template.update(name=self.network, plugins=[plugin])
        argv = self.agent_argv(
            self.kubeconfig, self.node, self.write_template(template),
            metrics="off", grace_period=str(self.grace_period),
        )  # fmt: skip
        argv += [*self.extra_args, "--network-policy", "on" if self.network_policy else "off"]
        self.spawn_agent(argv)

    def _synced(self) -> bool:
        self.check_running("the agent")
        kube = self.status().get("kubernetes", {})
        return bool(kube.get("podsSynced")) and bool(kube.get("syncs"))

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
                "containers": [{"name": "app", "image": BUSYBOX}],
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
    def cni(self, command: str, pod: Sandbox, *, netns: str | None = None) -> dict[str, Any]:
        """Exec the installed plugin as containerd's CRI does for a pod sandbox."""
        return self.exec_cni(
            command,
            pod.sandbox_id,
            pod.netns_path if netns is None else netns,
            extra_env={"CNI_ARGS": pod.cni_args},
        )

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
        return reservation_owners(self.data_dir, self.network)

    def host_veths(self) -> list[str]:
        return sorted(ln["ifname"] for ln in links() if ln["ifname"].startswith(self.veth_prefix))

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
        delete_links(*self.host_veths(), self.bridge)
        if not self.masq_table_existed:
            drop_unused_masq_table()
        if self.network_policy and not self.policy_table_existed:
            PolicyTable().delete()
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


def check_interface(cluster: Cluster, pod: Sandbox, pni: dict[str, Any]) -> None:
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


def check_network_status(cluster: Cluster, pod: Sandbox) -> None:
    kernel = pod.kernel()
    (entry,) = wait_for(f"network-status of {pod.name}", lambda: cluster.network_status(pod.name))
    assert entry["name"] == cluster.network and entry["interface"] == "eth0"
    assert entry["default"] is True
    assert sorted(entry["ips"]) == sorted(str(ipaddress.ip_interface(i).ip) for i in kernel["ips"])
    assert entry["mac"] == kernel["mac"] and entry["mtu"] == kernel["mtu"]
    assert entry["gateway"] == [str(ipaddress.ip_network(c)[1]) for c in cluster.pod_cidrs]
