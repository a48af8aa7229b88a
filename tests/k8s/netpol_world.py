"""Kubernetes pods on a simulated cluster for the network policy tests.

Builds on ``simcluster``: each simulated node runs its agent (network policy on, the default).
A pod here is what the kubelet would make of a Pod: the Pod object (bound to its node, with
labels and named container ports), a netns, the plugin's ADD through that node's agent with the
CRI's CNI_ARGS (K8S_POD_NAMESPACE/NAME/UID), and the status the kubelet reports (podIPs). The
probes (tests/support/probes.py) run between the pods' netns; the servers listen in them.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.plugin import PLUGIN
from tests.support.probes import Probe, Servers, run_probes
from tests.support.waiting import wait_for

from .cluster import require
from .controlplane import ControlPlane
from .simcluster import SimCluster, SimNode

PROTOCOLS = ("tcp", "udp", "sctp")
TOOLS = ("ip", "nft", "curl")  # the pods' netns and links, the agents' tables, the probes


def require_tools(what: str) -> None:
    """Skip ``what`` without TOOLS, or fail under LOXI_K8S_REQUIRED=1 (``require``)."""
    missing = [t for t in TOOLS if subprocess.run(
        ["sh", "-c", f"command -v {t}"], capture_output=True).returncode]  # fmt: skip
    require(missing, what)


@dataclass
class KPod:
    namespace: str
    name: str
    node: SimNode
    netns: str
    uid: str = ""
    sandbox: str = field(default_factory=lambda: uuid.uuid4().hex)
    ips: dict[int, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def cni_args(self) -> str:
        return (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={self.sandbox};K8S_POD_UID={self.uid}"
        )


@dataclass
class World:
    cp: ControlPlane
    sim: SimCluster
    pods: dict[str, KPod] = field(default_factory=dict)  # by namespace/name
    namespaces: list[str] = field(default_factory=list)
    servers: Servers = field(default_factory=Servers)
    externals: list[str] = field(default_factory=list)  # addresses outside the cluster

    # -- the API
    def namespace(self, name: str, labels: Mapping[str, str]) -> None:
        obj = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": dict(labels)}}  # fmt: skip
        self.cp.kubectl("apply", "-f", "-", input=json.dumps(obj))
        if name not in self.namespaces:
            self.namespaces.append(name)

    def pod(
        self, namespace: str, name: str, node: SimNode, labels: Mapping[str, str],
        ports: Iterable[tuple[str, str, int]] = (),
    ) -> KPod:  # fmt: skip
        """A Pod bound to ``node`` (named container ports: (name, protocol, number)), its
        sandbox ADDed through the node's agent, and its status as the kubelet reports it."""
        netns = f"lxq-{self.sim.tag}-{len(self.pods)}"
        kpod = KPod(namespace, name, node, netns)
        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {
                "nodeName": node.name,
                "containers": [{
                    "name": "app", "image": "loxi.local/busybox:rt",
                    "ports": [{"name": n, "protocol": p, "containerPort": c} for n, p, c in ports],
                }],
            },
        }  # fmt: skip
        out = self.cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(obj)).stdout
        kpod.uid = json.loads(out)["metadata"]["uid"]
        subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
        self.pods[kpod.ref] = kpod
        result = self.cni("ADD", kpod)
        for ip in result["ips"]:
            iface = ipaddress.ip_interface(ip["address"])
            kpod.ips[iface.version] = str(iface.ip)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=30)
        ips = [kpod.ips[v] for v in sorted(kpod.ips)]
        status = {"status": {"phase": "Running", "podIP": ips[0],
                             "podIPs": [{"ip": ip} for ip in ips]}}  # fmt: skip
        self.cp.kubectl(
            "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps(status),
        )  # fmt: skip
        return kpod

    def cni(self, command: str, pod: KPod) -> dict[str, Any]:
        node = pod.node
        env = {
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.sandbox,
            "CNI_NETNS": f"/var/run/netns/{pod.netns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": pod.cni_args,
            **node.env,
        }
        proc = subprocess.run(
            ["ip", "netns", "exec", node.ns, PLUGIN], input=json.dumps(node.conf()).encode(),
            env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, f"{command} {pod.ref}: {proc.stdout!r} {proc.stderr!r}"
        return dict(json.loads(proc.stdout)) if proc.stdout.strip() else {}

    def apply_policies(self, policies: list[dict[str, Any]]) -> None:
        """Make the cluster's NetworkPolicies exactly ``policies`` (in our namespaces), and
        wait until every node's agent enforces exactly those versions."""
        wanted = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in policies}
        for ns in self.namespaces:
            have = self.cp.get_json("networkpolicies", "-n", ns)["items"]
            for item in have:
                if (ns, item["metadata"]["name"]) not in wanted:
                    self.cp.kubectl("delete", "networkpolicy", item["metadata"]["name"], "-n", ns)
        if policies:
            doc = {"apiVersion": "v1", "kind": "List", "items": policies}
            self.cp.kubectl("apply", "-f", "-", input=json.dumps(doc))
        self.wait_enforced()

    def wait_enforced(self, timeout: float = 30) -> None:
        rvs: dict[str, str] = {}
        for ns in self.namespaces:
            for item in self.cp.get_json("networkpolicies", "-n", ns)["items"]:
                meta = item["metadata"]
                rvs[f"{meta['namespace']}/{meta['name']}"] = meta["resourceVersion"]

        def done(node: SimNode) -> bool:
            policy = node.status().get("networkPolicy") or {}
            applied = {
                k: v for k, v in (policy.get("appliedPolicies") or {}).items()
                if k.split("/")[0] in self.namespaces
            }  # fmt: skip
            return applied == rvs and bool(policy.get("synced"))

        for node in self.sim.nodes:
            wait_for(
                f"{node.name} to enforce {sorted(rvs)}", functools.partial(done, node), timeout
            )

    # -- outside the cluster
    def add_externals(self, ips: Iterable[str]) -> None:
        """Addresses outside the cluster, held by the router (the pods' way out); the router
        is given routes back to every node's pod CIDRs, so they can be sources too."""
        router = self.sim.router
        script = ""
        for ip in ips:
            script += f"addr add {ip}/{128 if ':' in ip else 32} dev lo\n"
            self.externals.append(ip)
        for node in self.sim.nodes:
            script += f"route replace {node.pod4} via {node.ipv4}\n"
            script += f"route replace {node.pod6} via {node.ipv6}\n"
        subprocess.run(["ip", "-n", router, "-batch", "-"], input=script.encode(), check=True,
                       timeout=30)  # fmt: skip

    def endpoint(self, key: str, family: int) -> tuple[str, str]:
        """(netns, address) of a pod ("namespace/name") or of an outside address."""
        if key in self.pods:
            return self.pods[key].netns, self.pods[key].ips[family]
        assert key in self.externals, key
        return self.sim.router, key

    # -- traffic
    def listen(self, ports: Iterable[tuple[int, str]]) -> None:
        self.servers.listen(
            (p.netns, ip, port, proto)
            for p in self.pods.values()
            for ip in p.ips.values()
            for port, proto in ports
        )
        self.servers.listen(
            (self.sim.router, ip, port, proto) for ip in self.externals for port, proto in ports
        )

    def probe(
        self, probes: Iterable[tuple[str, str, int, str, int]], timeout: float = 0.8
    ) -> dict[tuple[str, str, int, str, int], bool]:
        """(source ref, destination ref, port, protocol, family) -> got through."""
        keyed = {}
        for key in probes:
            src, src_ip = self.endpoint(key[0], key[4])
            dst, dst_ip = self.endpoint(key[1], key[4])
            # An outside source sends from its own address, not the router's.
            bind = src_ip if key[0] in self.externals else ""
            keyed[key] = Probe(src, dst, dst_ip, key[2], key[3], bind)
        got = run_probes(keyed.values(), self.servers, timeout)
        return {key: got[p] for key, p in keyed.items()}

    # -- the end
    def destroy(self) -> None:
        self.servers.close()
        for pod in self.pods.values():
            if pod.node.proc is not None and pod.node.proc.poll() is None:
                try:
                    self.cni("DEL", pod)
                except AssertionError as exc:
                    print(f"DEL failed: {exc}")
            subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True, timeout=30)
        for ns in self.namespaces:
            self.cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@contextlib.contextmanager
def running_world(
    cp: ControlPlane, agent_kubeconfig: Path, work: Path, *, nodes: int, mode: str
) -> Iterator[World]:
    """A World on ``nodes`` simulated nodes, each agent (cross-node ``mode``) synced; then
    every agent's log tail (what a failure needs) and all of it removed. The API server must
    hold no other Node: its agent would be a peer of ours."""
    others = [n["metadata"]["name"] for n in cp.get_json("nodes")["items"]]
    assert others == [], f"Nodes of other tests would be peers too: {others}"
    sim = SimCluster(cp, agent_kubeconfig, work)
    w = World(cp, sim)
    try:
        sim.build(nodes=nodes)
        template = sim.template()
        for node in sim.nodes:
            node.start_agent(mode, template, wait=False)
        for node in sim.nodes:
            node.wait_synced(60)
        yield w
    finally:
        for node in sim.nodes:
            print(f"----- agent of {node.name}\n{node.tail()}")
        w.destroy()
        sim.destroy()
