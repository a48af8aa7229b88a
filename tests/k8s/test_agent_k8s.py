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
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtimes import oci
from tests.runtimes.helpers import LOOPBACK
from tests.runtimes.runtimes import Containerd
from tests.support.plugin import PLUGIN
from tests.support.waiting import wait_for

from .cluster import (
    Cluster,
    Sandbox,
    check_interface,
    check_network_status,
    free_pod_cidr,
    host_link,
    template_from_configmap,
)
from .controlplane import ControlPlane


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


def test_pods_get_interfaces_and_network_status_then_lose_them(cluster: Cluster) -> None:
    cluster.start_agent()
    wait_for("the CNI config", cluster.conf_path.exists)
    elsewhere = cluster.create_pod("elsewhere", node="some-other-node")
    pods = [cluster.run_sandbox(f"web-{i}") for i in range(2)]

    pnis = wait_for("a PodNetworkInterface per pod",
                    lambda: (i := cluster.interfaces()) and len(i) == 2 and i)  # fmt: skip
    for pod in pods:
        check_interface(cluster, pod, pnis[pod.name])
        check_network_status(cluster, pod)
    assert len({p["spec"]["hostInterface"] for p in pnis.values()}) == 2
    # Only this node's Pods are watched: the server-side field selector.
    wait_for("the two Pods of the node in the watch",
             lambda: cluster.status()["kubernetes"]["podsWatched"] == 2)  # fmt: skip
    assert cluster.network_status(elsewhere["metadata"]["name"]) is None

    # `kubectl get podnetworkinterfaces -o wide` reads like a table of the node's veths.
    table = cluster.kubectl("get", "podnetworkinterfaces", "-n", cluster.namespace, "-o", "wide")
    head, *rows = table.stdout.splitlines()
    assert head.split() == [
        "NAME", "POD", "INTERFACE", "VETH", "IPS", "MAC", "STATE", "INGRESS-POLICIES",
        "EGRESS-POLICIES", "NODE", "BRIDGE", "VLAN", "MTU", "GATEWAY", "NETWORK", "CONTAINER",
        "AGE",
    ]  # fmt: skip
    for pod in pods:
        spec = pnis[pod.name]["spec"]
        (row,) = [r.split() for r in rows if r.split()[1] == pod.name]
        assert row[2:4] == ["eth0", spec["hostInterface"]]
        assert spec["ips"][0] in row[4] and row[5] == spec["mac"] and row[6] == "Ready"
        # network policy is off for this node: the policy columns are empty
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
    check_interface(cluster, c, cluster.interfaces()["late"])
    check_network_status(cluster, c)
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
    check_interface(cluster, kept, cluster.interfaces()["kept"])
    # A late DEL from the runtime is still answered with success.
    cluster.cni("DEL", lost)


RBAC_ALLOWED = [
    ("get", "pods"), ("list", "pods"), ("watch", "pods"),
    ("patch", "pods", "--subresource=status"),
    ("get", "nodes"), ("list", "nodes"), ("watch", "nodes"),
    ("get", "podnetworkinterfaces.loxicni.io"), ("list", "podnetworkinterfaces.loxicni.io"),
    ("create", "podnetworkinterfaces.loxicni.io"), ("patch", "podnetworkinterfaces.loxicni.io"),
    ("delete", "podnetworkinterfaces.loxicni.io"),
    ("list", "namespaces"), ("watch", "namespaces"),
    ("list", "networkpolicies.networking.k8s.io"), ("watch", "networkpolicies.networking.k8s.io"),
    ("get", "nodenetworks.loxicni.io"), ("create", "nodenetworks.loxicni.io"),
    ("patch", "nodenetworks.loxicni.io"),
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
    ("list", "nodenetworks.loxicni.io"), ("delete", "nodenetworks.loxicni.io"),
    ("update", "nodenetworks.loxicni.io"), ("deletecollection", "nodenetworks.loxicni.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "daemonsets.apps"), ("create", "customresourcedefinitions"),
    ("list", "events"),
    ("get", "namespaces"), ("patch", "namespaces"), ("create", "namespaces"),
    ("delete", "namespaces"),
    ("get", "networkpolicies.networking.k8s.io"), ("create", "networkpolicies.networking.k8s.io"),
    ("patch", "networkpolicies.networking.k8s.io"),
    ("delete", "networkpolicies.networking.k8s.io"),
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
    assert "--cross-node=auto" in agent["args"]  # a cluster network out of the box
    template_arg = next(a for a in agent["args"] if a.startswith("--cni-conf-template="))
    mount = next(m for m in agent["volumeMounts"] if m["name"] == "template")
    assert template_arg.split("=", 1)[1].startswith(mount["mountPath"] + "/")
    volume = next(v for v in spec["volumes"] if v["name"] == "template")
    assert volume["configMap"]["name"] == "loxi-cni-config"
    cm = control_plane.get_json("configmap", "loxi-cni-config", "-n", "kube-system")
    assert json.loads(cm["data"]["cni-conf-template.json"])["plugins"][0]["type"] == "loxi-cni"
    host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert {
        "/opt",
        "/etc/cni/net.d",
        "/run/loxi-cni",
        "/var/lib/loxi-cni",
        "/var/log/loxi-cni",
    } <= (host_paths)
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
        check_interface(cluster, sandbox, pni)
        check_network_status(cluster, sandbox)

        ctrd.crictl("stopp", pod_id, timeout=60)
        ctrd.crictl("rmp", pod_id, timeout=60)
        wait_for("the PodNetworkInterface to go with the sandbox",
                 lambda: cluster.interfaces() == {})  # fmt: skip
        cluster.force_delete_pod("cri-0")
        assert cluster.reservations() == {} and cluster.host_veths() == []
    finally:
        ctrd.close()
