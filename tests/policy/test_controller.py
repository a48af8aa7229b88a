"""The policy controller without an API server: its watch handlers fed lightkube objects, its
table in a netns of our own. Nothing reaches the kernel before all three lists are in; the
first program replaces the table; an ADD waits until its pod is filtered."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube.resources.core_v1 import Namespace, Pod
from lightkube.resources.networking_v1 import NetworkPolicy

from loxicni.k8s.netpol.controller import PolicyController
from loxicni.net import policy_table as pt
from loxicni.net.policy_table import PolicyTable


@pytest.fixture
def controller(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[PolicyController, str]]:
    monkeypatch.setenv("LOXI_CNI_STATE_DIR", str(tmp_path))
    ns = f"lxc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    c = PolicyController("n1", None, PolicyTable(("ip", "netns", "exec", ns)), resync=0.2)
    try:
        yield c, ns
    finally:
        c.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def pod(name: str, ip: str, node: str = "n1", **labels: str) -> Pod:
    return Pod.from_dict({
        "metadata": {"name": name, "namespace": "a", "uid": f"uid-{name}", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"podIPs": [{"ip": ip}] if ip else []},
    })  # fmt: skip


def deny_all() -> NetworkPolicy:
    meta = {"name": "deny", "namespace": "a", "resourceVersion": "7"}
    return NetworkPolicy.from_dict({"metadata": meta, "spec": {"podSelector": {}}})


def ingress_map(ns: str) -> list[Any]:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "map", "inet", pt.TABLE, "ingress4"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        return []
    (obj,) = [o["map"] for o in json.loads(proc.stdout)["nftables"] if "map" in o]
    return [e[0] for e in obj.get("elem", [])]


def test_nothing_before_every_list_then_one_swap(
    controller: tuple[PolicyController, str],
) -> None:
    c, ns = controller
    c._policies_listed([deny_all()])
    c._namespaces_listed([Namespace.from_dict({"metadata": {"name": "a"}})])
    assert c.apply() is False  # pods not listed yet: a table now would open every pod
    assert not c.table.exists()
    c._pods_listed([pod("p1", "10.9.0.2"), pod("far", "10.9.1.2", node="n2")])
    assert c.apply() is True
    assert ingress_map(ns) == ["10.9.0.2"]  # only this node's pod is filtered
    assert c.table.rebuilds == 1
    status = c.status()
    assert status["synced"] and status["appliedPolicies"] == {"a/deny": "7"}
    assert status["selectedPods"] == {"a/p1": {"ingress": ["deny"], "egress": []}}


def test_an_add_waits_until_its_pod_is_filtered(
    controller: tuple[PolicyController, str],
) -> None:
    c, ns = controller
    c._policies_listed([deny_all()])
    c._namespaces_listed([])
    c._pods_listed([])
    c.start()
    # The runtime's ADD arrives before the watch has the Pod and before the kubelet posts
    # its address; the Pod shows up a little later, still without an address.
    threading.Timer(0.3, lambda: c._pod_event("ADDED", pod("p2", ""))).start()
    env = {"CNI_ARGS": "K8S_POD_NAMESPACE=a;K8S_POD_NAME=p2;K8S_POD_UID=uid-p2"}
    result = json.dumps({"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.3/24"}]})
    start = time.monotonic()
    c.attachment_changed("ADD", env, result.encode())
    assert 0.3 <= time.monotonic() - start < 2.0
    assert ingress_map(ns) == ["10.9.0.3"]  # filtered before the runtime hears of it
    c.attachment_changed("DEL", env)
    deadline = time.monotonic() + 5
    while ingress_map(ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ingress_map(ns) == []
