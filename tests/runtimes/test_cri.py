"""containerd's CRI plugin, the kubelet's path, driven through crictl with real pod metadata.

CRI makes the netns (/var/run/netns/cni-<uuid>), execs loopback then loxi-cni from its own
configured conf_dir/bin_dir with K8S_POD_* in CNI_ARGS, reports the pod IP from the result,
and tears down twice: DEL with the netns on StopPodSandbox, DEL with CNI_NETNS="" on
RemovePodSandbox (both with CNI_NETNS="" when the netns mount is already gone at stop).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from tests.support.host import links
from tests.support.processes import sh, stop_process
from tests.support.waiting import wait_for

from .helpers import Network, ipv4_of, ping
from .oci import Image
from .runtimes import Containerd

K8S_NS = "loxi-rt"


def run_pod(ctrd: Containerd, workdir: Path, name: str) -> tuple[str, dict[str, Any], Path]:
    """RunPodSandbox with kubelet-like metadata: the pod ID, the config sent, its file."""
    config = {
        "metadata": {"name": name, "namespace": K8S_NS, "uid": str(uuid.uuid4()), "attempt": 0},
        "hostname": name,
        "log_directory": str(workdir / "pod-logs"),
        "labels": {"app": name},
        "linux": {"cgroup_parent": ctrd.cgroup_parent},
    }
    path = workdir / f"{name}.pod.json"
    path.write_text(json.dumps(config))
    pod_id = ctrd.crictl("runp", str(path), timeout=120).stdout.strip()
    return pod_id, config, path


def pod_netns(status: dict[str, Any]) -> str:
    (path,) = [
        ns["path"]
        for ns in status["info"]["runtimeSpec"]["linux"]["namespaces"]
        if ns["type"] == "network"
    ]
    return str(path)


def test_pod_lifecycle_through_cri(
    containerd: Containerd, network: Network, busybox: Image, pause: Image, tmp_path: Path
) -> None:
    containerd.import_image(pause, namespace="k8s.io")
    containerd.import_image(busybox, namespace="k8s.io")
    pod_id, pod, pod_path = run_pod(containerd, tmp_path, "web-0")

    status = containerd.inspectp(pod_id)
    netns = pod_netns(status)
    assert netns.startswith("/var/run/netns/cni-") and Path(netns).exists()
    pod_ip = status["status"]["network"]["ip"]
    # The IP containerd reports is the one loxi-cni reserved for this sandbox.
    assert network.reservations() == {pod_ip: pod_id}
    assert status["status"]["network"]["additionalIps"] == []
    (add,) = network.calls()
    assert (add.command, add.netns, add.container_id, add.ifname, add.rc) == (
        "ADD", netns, pod_id, "eth0", 0,
    )  # fmt: skip
    assert add.cni_args == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": K8S_NS,
        "K8S_POD_NAME": "web-0",
        "K8S_POD_INFRA_CONTAINER_ID": pod_id,
        "K8S_POD_UID": pod["metadata"]["uid"],
    }
    (veth,) = network.host_veths()
    assert {ln["ifname"]: ln.get("master") for ln in links()}[veth] == network.bridge
    # CRI's libcni caches the result in the host's /var/lib/cni (not configurable in 1.6).
    assert network.cached() == [f"{network.name}-{pod_id}-eth0"]

    # An app container in the pod sees the address and reaches the gateway; the host reaches it.
    box = {
        "metadata": {"name": "box"},
        "image": {"image": busybox.name},
        "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
        "log_path": "box.log",
        "linux": {},
    }
    box_path = tmp_path / "box.json"
    box_path.write_text(json.dumps(box))
    cid = containerd.crictl("create", pod_id, str(box_path), str(pod_path)).stdout.strip()
    containerd.crictl("start", cid)
    shown = containerd.crictl("exec", "-s", cid, "ip", "-o", "-4", "addr", "show", "eth0")
    assert ipv4_of(shown.stdout) == [f"{pod_ip}/24"]
    route = containerd.crictl("exec", "-s", cid, "ip", "route").stdout
    assert f"default via {network.gateway} dev eth0" in route
    containerd.crictl("exec", "-s", cid, "ping", "-c1", "-W2", network.gateway)
    assert ping(pod_ip).returncode == 0, "host cannot reach the pod"

    # StopPodSandbox: DEL with the netns; everything released, the netns removed.
    containerd.crictl("stopp", pod_id)
    assert [(c.command, c.netns, c.rc) for c in network.calls()] == [
        ("ADD", netns, 0), ("DEL", netns, 0),
    ]  # fmt: skip
    network.assert_nothing_left(pod_id)
    assert not Path(netns).exists()

    # RemovePodSandbox: a second DEL, with CNI_NETNS="", must succeed on nothing.
    containerd.crictl("rmp", pod_id)
    calls = network.calls()
    assert [(c.command, c.netns, c.rc) for c in calls] == [
        ("ADD", netns, 0), ("DEL", netns, 0), ("DEL", "", 0),
    ]  # fmt: skip
    assert all(c.cni_args == add.cni_args for c in calls), "every call carries the pod's args"
    assert containerd.crictl("pods", "-q").stdout.split() == []
    network.assert_nothing_left(pod_id)
    assert network.cached() == []


def test_stop_after_the_netns_mount_vanished(
    containerd: Containerd, network: Network, pause: Image, tmp_path: Path
) -> None:
    """The netns mount is gone (say, /var/run wiped) but the netns itself lives on.

    StopPodSandbox's DEL then comes with CNI_NETNS="" while the veth still exists: loxi-cni
    has to find the host end by itself, remove it (which takes the pod's end too) and release
    the address.
    """
    containerd.import_image(pause, namespace="k8s.io")
    pod_id, _, _ = run_pod(containerd, tmp_path, "db-0")
    status = containerd.inspectp(pod_id)
    netns = pod_netns(status)
    pod_ip = status["status"]["network"]["ip"]
    assert network.reservations() == {pod_ip: pod_id}

    # Something of ours keeps the netns alive after the sandbox's pause process is gone.
    holder = subprocess.Popen(
        ["nsenter", f"--net={netns}", "sleep", "120"], stdin=subprocess.DEVNULL
    )
    try:
        held = f"/proc/{holder.pid}/ns/net"
        wait_for("the holder to enter the pod's netns", lambda: _same_ns(held, netns))
        sh(["umount", netns])
        Path(netns).unlink()

        containerd.crictl("stopp", pod_id)
        assert [(c.command, c.netns, c.rc) for c in network.calls()] == [
            ("ADD", netns, 0), ("DEL", "", 0),
        ]  # fmt: skip
        network.assert_nothing_left(pod_id)
        inside = sh(["nsenter", f"--net={held}", "ip", "-o", "link", "show"]).stdout
        assert "eth0" not in inside, f"the pod's end of the veth is still there: {inside}"
    finally:
        stop_process(holder, grace=5)

    containerd.crictl("rmp", pod_id)
    assert [c.command for c in network.calls()] == ["ADD", "DEL", "DEL"]
    assert all(c.rc == 0 for c in network.calls())
    network.assert_nothing_left(pod_id)
    assert network.cached() == []


def _same_ns(a: str, b: str) -> bool:
    """Both paths name one network namespace (same nsfs inode)."""
    try:
        return Path(a).stat().st_ino == Path(b).stat().st_ino
    except OSError:
        return False
