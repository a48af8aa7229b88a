"""NetworkPolicy on a node at scale, on a real API server: update latency, cost of a label
change, and request/response rate with and without policies.

A control plane (tests/k8s/controlplane.py, as `make e2e` builds it) gets deploy/'s manifests;
two simulated nodes (tests/k8s/simcluster.py: network namespaces, each running the installed
agent, network policy on) join it. The node under test sees ``--pods`` Pods (two real ones on
it, ADDed through the plugin and its agent; a tenth of the rest are its own without sandboxes,
the others on nodes that exist only in the API) in 10 namespaces, and ``--policies``
NetworkPolicies over them (pod and namespace selectors, both, ipBlock with except, numbered,
named and ranged ports, ingress and egress). Then:

* ``add`` / ``update``: from just before the API request (a policy created, or its port
  changed) to ``nft monitor`` in the node's namespace showing the kernel's commit of its
  chain: the agent's watch, compile and nft transaction, measured from outside the agent;
* ``label change``: one of the node's pods moves from one selector to another; the
  transaction's lines as ``nft monitor`` shows them (elements vs rules);
* ``TCP_RR``: round trips per second of one TCP connection between the two real pods
  (bench/tcp_rr.c, compiled here), rounds alternating between the ``--policies`` in place
  (both pods isolated, and allowed to talk) and none, in one run; medians compared.

Usage (as root; LOXI_CNI_BIN: the installed plugin)::

    netpol_bench.py [--pods 1000] [--policies 200] [--samples 100] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightkube import Client, KubeConfig  # noqa: E402
from lightkube.resources.core_v1 import Pod, PodStatus  # noqa: E402
from lightkube.resources.networking_v1 import NetworkPolicy  # noqa: E402

from loxicni.k8s.netpol.compiler import digest  # noqa: E402
from tests.k8s.cluster import apply_deploy  # noqa: E402
from tests.k8s.controlplane import ControlPlane, find_binaries  # noqa: E402
from tests.k8s.netpol_world import World  # noqa: E402
from tests.k8s.simcluster import SimCluster  # noqa: E402

NAMESPACES = 10
APPS = 20
RR_PORT = 5001
R = TypeVar("R", Pod, NetworkPolicy)


def from_dict(kind: type[R], obj: dict[str, Any]) -> R:
    """``kind.from_dict(obj)``, typed as ``kind`` (lightkube's says DictMixin)."""
    return cast(R, kind.from_dict(obj))


class Monitor:
    """``nft monitor`` in a netns: every line with the time it was read."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "nft", "monitor"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its warnings about sets it has not cached
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.3)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append((time.perf_counter(), line.rstrip("\n")))
                self.cond.notify_all()

    def wait(self, start: int, *needles: str, timeout: float = 30) -> float:
        """When a line after index ``start`` held every needle."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    t, line = self.lines[i]
                    if all(n in line for n in needles):
                        return t
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no nft event with {needles}")
                self.cond.wait(left)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def labels(i: int) -> dict[str, str]:
    return {"app": f"a{i % APPS}", "tier": f"t{i % 3}"}


def bulk_pods(count: int, local: str, local_cidr: str) -> list[tuple[dict[str, Any], list[str]]]:
    """Pods (object, addresses): a tenth on the node under test, the rest on ghost nodes."""
    base = local_cidr.rsplit(".", 1)[0]  # 10.203.11.0/24 -> 10.203.11
    out = []
    for i in range(count):
        mine = i % 10 == 0
        node = local if mine else f"ghost-{i % 50}"
        ips = (
            [f"{base}.{100 + (i // 10) % 150}", f"fd77:{i:x}::1"]
            if mine
            else [f"10.210.{i // 250}.{1 + i % 250}", f"fd10:210::{i:x}"]
        )
        obj = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"bulk-{i}", "namespace": f"np{i % NAMESPACES}",
                         "labels": labels(i)},
            "spec": {"nodeName": node, "containers": [{
                "name": "app", "image": "loxi.local/busybox:rt",
                "ports": [{"name": "http", "containerPort": 8000 + i % 3, "protocol": "TCP"},
                          {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        }  # fmt: skip
        out.append((obj, ips))
    return out


def policy(j: int) -> dict[str, Any]:
    ns = f"np{j % NAMESPACES}"
    ingress: dict[str, Any] = {
        "from": [{"podSelector": {"matchLabels": {"app": f"a{(j + 1) % APPS}"}}}],
        "ports": [{"port": 80}, {"port": "http"}, {"protocol": "UDP", "port": 9000,
                                                   "endPort": 9100}],
    }  # fmt: skip
    if j % 2:
        ingress["from"].append({
            "namespaceSelector": {"matchLabels": {"team": f"t{(j + 3) % NAMESPACES}"}},
            "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In",
                                                  "values": ["t0", "t1"]}]},
        })  # fmt: skip
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {"app": f"a{j % APPS}"}},
        "ingress": [ingress],
    }
    if j % 3 == 0:
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["egress"] = [
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.210.0.0/16"]}}],
             "ports": [{"protocol": "UDP", "port": 53}, {"port": "http"}]},
            {"to": [{"namespaceSelector": {}}]},
        ]  # fmt: skip
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol-{j}", "namespace": ns}, "spec": spec}  # fmt: skip


def rr_policies() -> list[dict[str, Any]]:
    """The two real pods isolated both ways, and allowed to talk."""

    def np(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": "np0"}, "spec": spec}  # fmt: skip

    def app(name: str) -> dict[str, Any]:
        return {"matchLabels": {"app": name}}

    both = ["Ingress", "Egress"]
    return [
        np("rr-server", {"podSelector": app("rr-server"), "policyTypes": both,
                         "ingress": [{"from": [{"podSelector": app("rr-client")}],
                                      "ports": [{"port": RR_PORT}]}]}),
        np("rr-client", {"podSelector": app("rr-client"), "policyTypes": both,
                         "egress": [{"to": [{"podSelector": app("rr-server")}],
                                     "ports": [{"port": RR_PORT}]}]}),
    ]  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rr-seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bin_dir = find_binaries(build=True)
    if bin_dir is None:
        raise SystemExit("no Kubernetes binaries: run `make k8s-deps`")
    work = Path(tempfile.mkdtemp(prefix="loxi-netpol-bench-"))
    rr_bin = work / "tcp_rr"
    source = REPO / "bench" / "tcp_rr.c"
    subprocess.run(["gcc", "-O2", "-o", str(rr_bin), str(source)], check=True)
    result: dict[str, Any] = {"pods": args.pods, "policies": args.policies}
    with ControlPlane(bin_dir) as cp:
        agent_kubeconfig = apply_deploy(cp)
        client = Client(config=KubeConfig.from_file(str(cp.kubeconfig)), field_manager="bench")
        sim = SimCluster(cp, agent_kubeconfig, work / "sim")
        world = World(cp, sim)
        monitor = None
        servers: list[subprocess.Popen[bytes]] = []
        try:
            sim.build(nodes=2)
            template = sim.template()
            for node in sim.nodes:
                node.start_agent("routes", template)
            me = sim.nodes[0]
            for k in range(NAMESPACES):
                world.namespace(f"np{k}", {"team": f"t{k}"})
            server = world.pod("np0", "rr-server", me, {"app": "rr-server"})
            client_pod = world.pod("np0", "rr-client", me, {"app": "rr-client"})
            start = time.perf_counter()
            bulk = bulk_pods(args.pods - 2, me.name, str(me.pod4))

            def make(item: tuple[dict[str, Any], list[str]]) -> None:
                obj, ips = item
                client.create(from_dict(Pod, obj))
                client.patch(
                    PodStatus, obj["metadata"]["name"], namespace=obj["metadata"]["namespace"],
                    obj={"status": {"phase": "Running", "podIP": ips[0],
                                    "podIPs": [{"ip": ip} for ip in ips]}},
                )  # fmt: skip

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(make, bulk))
            result["pods created s"] = round(time.perf_counter() - start, 1)
            policies = [policy(j) for j in range(args.policies - 2)] + rr_policies()
            start = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda p: client.create(from_dict(NetworkPolicy, p)), policies))
            world.wait_enforced(timeout=300)
            result["all policies enforced s"] = round(time.perf_counter() - start, 2)
            status = me.status()["networkPolicy"]
            result["pods watched"] = status["podsWatched"]
            result["isolated on the node"] = status["isolated"]

            monitor = Monitor(me.ns)
            adds, updates = [], []
            for i in range(args.samples):
                ns, name = f"np{i % NAMESPACES}", f"lat-{i}"
                chain = f"p_{digest(f'{ns}/{name}')}_i4"
                obj = policy(i)
                obj["metadata"] = {"name": name, "namespace": ns}
                obj["spec"]["ingress"][0]["ports"] = [{"port": 20000 + i}]
                mark = len(monitor.lines)
                t0 = time.perf_counter()
                created = client.create(from_dict(NetworkPolicy, obj))
                adds.append(monitor.wait(mark, chain, str(20000 + i)) - t0)
                assert created.metadata is not None
                obj["spec"]["ingress"][0]["ports"] = [{"port": 30000 + i}]
                mark = len(monitor.lines)
                t0 = time.perf_counter()
                client.patch(NetworkPolicy, name, namespace=ns,
                             obj={"spec": {"ingress": obj["spec"]["ingress"]}})  # fmt: skip
                updates.append(monitor.wait(mark, chain, str(30000 + i)) - t0)
            for key, values in (("add", adds), ("update", updates)):
                result[f"{key} p50 ms"] = round(statistics.median(values) * 1000, 1)
                result[f"{key} p99 ms"] = round(pct(values, 0.99) * 1000, 1)
                result[f"{key} max ms"] = round(max(values) * 1000, 1)

            # A pod of the node moves from app=a0 to app=a1: count what the kernel is told.
            mark = len(monitor.lines)
            client.patch(Pod, "bulk-0", namespace="np0",
                         obj={"metadata": {"labels": {"app": "a1"}}})  # fmt: skip
            time.sleep(1.5)
            lines = [line for _t, line in monitor.lines[mark:] if not line.startswith("#")]
            result["label change: element lines"] = sum(" element " in x for x in lines)
            result["label change: rule or chain lines"] = sum(
                x.startswith(("add rule", "delete rule", "add chain", "delete chain"))
                for x in lines
            )

            # TCP_RR between the two real pods, policies in place or not, alternating.
            srv = subprocess.Popen(
                ["ip", "netns", "exec", server.netns, str(rr_bin), "-s", server.ips[4],
                 str(RR_PORT)], stdout=subprocess.PIPE,
            )  # fmt: skip
            servers.append(srv)
            assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
            rates: dict[str, list[float]] = {"with": [], "none": []}
            for k in range(args.rounds):
                # Alternate which phase goes first: a machine's load drifts during a run.
                for phase in ("with", "none") if k % 2 == 0 else ("none", "with"):
                    world.apply_policies(policies if phase == "with" else [])
                    n = me.status()["networkPolicy"]["policies"]
                    time.sleep(2)  # the kernel's deferred frees of what changed, done
                    out = subprocess.run(
                        ["ip", "netns", "exec", client_pod.netns, str(rr_bin), "-c",
                         server.ips[4], str(RR_PORT), str(args.rr_seconds)],
                        capture_output=True, text=True, check=True,
                    ).stdout  # fmt: skip
                    rates[phase].append(float(out))
                    print(f"TCP_RR {phase} ({n} policies): {float(out):.0f}/s", file=sys.stderr)
            result["TCP_RR with policies /s"] = round(statistics.median(rates["with"]))
            result["TCP_RR none /s"] = round(statistics.median(rates["none"]))
            result["TCP_RR ratio"] = round(
                statistics.median(rates["with"]) / statistics.median(rates["none"]), 3
            )
            result["TCP_RR rounds"] = rates
            metrics = me.metrics()
            result["agent update_seconds count"] = next(
                (ln.split()[-1] for ln in metrics.splitlines()
                 if ln.startswith("loxi_cni_netpol_update_seconds_count")), "?",
            )  # fmt: skip
        finally:
            for proc in servers:
                proc.kill()
            if monitor is not None:
                monitor.close()
            world.destroy()
            sim.destroy()
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        print(f"{key:<40} {value}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
