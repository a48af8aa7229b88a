"""The control plane is real: kubectl against it, server-side field selectors, TokenRequest,
RBAC denials and grants, and the controller manager's garbage collector."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.waiting import wait_for

from .cluster import require
from .controlplane import ControlPlane


def _pod(name: str, node: str) -> str:
    """A Pod already bound to `node`, as the scheduler would leave it (no scheduler runs)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "loxi.local/none"}]},
        }
    )


def test_server_is_the_built_release_and_admin_is_a_master(control_plane: ControlPlane) -> None:
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert int(version["serverVersion"]["minor"]) >= 34
    whoami = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json").stdout)
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]
    assert control_plane.server.startswith("https://127.0.0.1:")
    assert control_plane.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_configmap_create_read_delete(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl(
        "create", "configmap", "cm", "-n", namespace, "--from-literal=subnet=10.244.1.0/24"
    )
    cm = control_plane.get_json("configmap", "cm", "-n", namespace)
    assert cm["data"] == {"subnet": "10.244.1.0/24"}
    assert cm["metadata"]["uid"]
    control_plane.kubectl("delete", "configmap", "cm", "-n", namespace)
    gone = control_plane.kubectl("get", "configmap", "cm", "-n", namespace, check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr


def test_nodes_carry_pod_cidrs(control_plane: ControlPlane) -> None:
    control_plane.create_node("cidr-node", ["10.244.7.0/24", "fd00:244:7::/64"])
    node = control_plane.get_json("node", "cidr-node")
    assert node["spec"]["podCIDR"] == "10.244.7.0/24"
    assert node["spec"]["podCIDRs"] == ["10.244.7.0/24", "fd00:244:7::/64"]
    control_plane.kubectl("delete", "node", "cidr-node")


def test_pods_listed_by_node_with_a_field_selector(
    control_plane: ControlPlane, namespace: str
) -> None:
    for node in ("sel-a", "sel-b"):
        control_plane.create_node(node, [f"10.244.{1 if node == 'sel-a' else 2}.0/24"])
    for name, node in (("p1", "sel-a"), ("p2", "sel-b"), ("p3", "sel-a")):
        control_plane.kubectl("create", "-n", namespace, "-f", "-", input=_pod(name, node))
    try:
        listed = control_plane.get_json(
            "pods", "--all-namespaces", "--field-selector", "spec.nodeName=sel-a"
        )
        assert sorted(p["metadata"]["name"] for p in listed["items"]) == ["p1", "p3"]
        assert {p["spec"]["nodeName"] for p in listed["items"]} == {"sel-a"}
    finally:
        # No kubelet confirms a graceful deletion: force it, as the pod GC would.
        control_plane.kubectl(
            "delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force"
        )
        control_plane.kubectl("delete", "node", "sel-a", "sel-b")


def test_serviceaccount_token_is_limited_to_what_its_role_grants(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "agent", "-n", namespace)
    as_agent = cp.kubeconfig_for_token(cp.token_for(namespace, "agent"))

    def can(*args: str) -> bool:
        res = cp.kubectl("auth", "can-i", *args, kubeconfig=as_agent, check=False)
        assert res.returncode in (0, 1), res.stderr
        return res.returncode == 0

    whoami = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=as_agent).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:agent"
    assert not can("list", "configmaps", "-n", namespace)

    cp.kubectl(
        "create",
        "role",
        "cm-reader",
        "-n",
        namespace,
        "--verb=get,list,watch",
        "--resource=configmaps",
    )
    cp.kubectl(
        "create",
        "rolebinding",
        "agent-cm-reader",
        "-n",
        namespace,
        "--role=cm-reader",
        f"--serviceaccount={namespace}:agent",
    )
    assert can("list", "configmaps", "-n", namespace)
    assert can("watch", "configmaps", "-n", namespace)
    assert not can("delete", "configmaps", "-n", namespace)
    assert not can("list", "secrets", "-n", namespace)
    assert not can("list", "configmaps", "-n", "default")
    assert not can("list", "nodes")

    # The real requests, not only the review: allowed read, forbidden write.
    cp.kubectl("get", "configmaps", "-n", namespace, kubeconfig=as_agent)
    denied = cp.kubectl(
        "create", "configmap", "x", "-n", namespace, kubeconfig=as_agent, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()


def test_owned_objects_are_garbage_collected(control_plane: ControlPlane, namespace: str) -> None:
    """What a PodNetworkInterface owned by its Pod relies on: the controller manager's GC."""
    cp = control_plane
    cp.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cp.get_json("configmap", "owner", "-n", namespace)["metadata"]["uid"]
    cp.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "namespace": namespace,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
                ],
            },
        }
    )
    cp.kubectl("delete", "configmap", "owner", "-n", namespace)
    deadline = time.monotonic() + 60
    while cp.kubectl("get", "configmap", "dependent", "-n", namespace, check=False).returncode == 0:
        assert time.monotonic() < deadline, "dependent not garbage-collected in 60 s"
        time.sleep(0.5)


REFERENCE_CNI = Path("/usr/lib/cni")  # Debian containernetworking-plugins


def test_kubelet_runs_pods_through_containerd_cri(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The whole node path for real: Pod bound in the API -> kubelet -> containerd 1.6 CRI ->
    CNI ADD (the reference bridge: this proves the cluster, not our plugin) -> Pod IP in the
    API; deletion -> CNI DEL, address released. Needs root and `make runtimes-deps`."""
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [t for t in ("containerd", "runc", "gcc") if shutil.which(t) is None]
    paths = [REFERENCE_CNI / p for p in ("bridge", "host-local", "loopback")]
    missing += [str(p) for p in (*paths, control_plane.bin_dir / "kubelet") if not p.exists()]
    require(missing, "a kubelet on the reference bridge plugin")
    from tests.runtimes import oci
    from tests.runtimes.helpers import free_subnet
    from tests.runtimes.runtimes import Containerd

    subnet = free_subnet()
    bridge = f"lxkl{uuid.uuid4().hex[:6]}"
    cni_bin, cni_conf, ipam = tmp_path / "bin", tmp_path / "net.d", tmp_path / "ipam"
    cni_bin.mkdir()
    cni_conf.mkdir()
    for plugin in ("bridge", "host-local", "loopback"):
        (cni_bin / plugin).symlink_to(REFERENCE_CNI / plugin)
    conf = {
        "cniVersion": "1.0.0",
        "name": "kubelet-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam),
                    "ranges": [[{"subnet": str(subnet)}]],
                },
            }
        ],
    }
    (cni_conf / "10-test.conflist").write_text(json.dumps(conf))
    cgroup_root = f"/loxi-kubelet-{bridge}"
    containerd = Containerd(tmp_path / "containerd", cni_bin, cni_conf, cgroup_root)
    node = "kubelet-node"
    cp = control_plane
    try:
        containerd.start()
        image = oci.pause_image(tmp_path / "pause.tar", containerd.pause, tmp_path)
        containerd.import_image(image, namespace="k8s.io")  # the kubelet's namespace
        cp.start_kubelet(node, containerd.socket, pod_cidrs=[str(subnet)], cgroup_root=cgroup_root)

        def node_ready() -> bool:
            conditions = cp.get_json("node", node)["status"].get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_for("Node Ready", node_ready, 60, interval=0.5)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "kp", "namespace": "default"},
            "spec": {
                "nodeName": node,
                "containers": [
                    {"name": "c", "image": containerd.pause, "imagePullPolicy": "Never"}
                ],
            },
        }
        cp.kubectl("create", "-f", "-", input=json.dumps(pod))
        wait_for(
            "Pod Running",
            lambda: cp.get_json("pod", "kp")["status"].get("phase") == "Running",
            90,
            interval=0.5,
        )
        ip = cp.get_json("pod", "kp")["status"]["podIP"]
        assert ipaddress.ip_address(ip) in subnet
        assert (ipam / "kubelet-test" / ip).exists()

        cp.kubectl("delete", "pod", "kp", "--timeout=60s", timeout=70)  # the kubelet confirms
        wait_for(
            "address released", lambda: not (ipam / "kubelet-test" / ip).exists(), 30, interval=0.5
        )
    finally:
        cp.stop_kubelet(node)
        containerd.close()
        cp.kubectl("delete", "node", node, "--ignore-not-found", check=False)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
