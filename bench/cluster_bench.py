"""The cross-node agent at cluster scale, on a real API server: N Node objects, one agent.

A control plane (tests/k8s/controlplane.py: etcd, kube-apiserver, kube-controller-manager, as
`make e2e` builds them) gets deploy/'s CRDs and RBAC and N dual-stack Node objects shaped like
a kubelet's (pod CIDRs, InternalIPs, conditions, capacity, node info, 20 images). A network
namespace plays the agent's node: an underlay veth holding 10.0.0.1/16 and fd00:50::1/64, so
every peer (10.0.i.j, fd00:50::i) is one hop away and ``routes`` reaches them too; the agent
reaches the API server through tests/k8s/apiforward.py, listening on the namespace's own
loopback. Then, per mode, the installed agent runs in the namespace (``--cross-node``) and:

* ``start -> programmed``: from the agent's exec to all 2N routes in its kernel (interpreter
  start, imports, the list of N Nodes, the first sync); ``first sync``: that sync alone (from
  an empty table: devices, reads, plan, every request), with its kernel requests;
* ``resync``: a periodic sync with nothing changed (reads only);
* ``node changed`` / ``node added`` / ``node deleted``: from the API write's return to the
  kernel holding the change, and the kernel requests that sync sent;
* the agent's RSS with N Nodes watched (VmRSS, and VmHWM: the peak, during the list).

Usage (as root; LOXI_CNI_BIN: the installed plugin)::

    cluster_bench.py [--nodes 1000] [--modes vxlan,routes] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from underlay_node import underlay_netns  # noqa: E402  (bench/, this script's directory)

from loxicni.net import netns, owned_routes  # noqa: E402
from loxicni.net.rtnl import Rtnl  # noqa: E402
from tests.k8s.controlplane import ControlPlane, find_binaries  # noqa: E402

PLUGIN = os.environ.get("LOXI_CNI_BIN", "/opt/cni/bin/loxi-cni")
SELF = "bench-self"


def node_object(name: str, i: int, ips: tuple[str, str] | None = None) -> dict[str, Any]:
    """A Node as a kubelet leaves it (the status is most of its size)."""
    v4, v6 = ips or (f"10.0.{2 + i // 250}.{1 + i % 250}", f"fd00:50::{i + 2:x}")
    cidrs = [f"10.{128 + i // 256}.{i % 256}.0/24", f"fd00:244:{i + 2:x}::/64"]
    now = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m5.large",
                "topology.kubernetes.io/zone": f"zone-{i % 3}",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": v4},
                {"type": "InternalIP", "address": v6},
                {"type": "Hostname", "address": name},
            ],
            "capacity": {
                "cpu": "2",
                "memory": "8023756Ki",
                "pods": "110",
                "ephemeral-storage": "101430960Ki",
            },
            "allocatable": {
                "cpu": "2",
                "memory": "7921356Ki",
                "pods": "110",
                "ephemeral-storage": "93478772582",
            },
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": f"Kubelet{t}",
                    "message": f"kubelet says {t}",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
                for t, s in (
                    ("MemoryPressure", "False"),
                    ("DiskPressure", "False"),
                    ("PIDPressure", "False"),
                    ("Ready", "True"),
                )
            ],
            "nodeInfo": {
                "machineID": uuid.uuid4().hex,
                "systemUUID": str(uuid.uuid4()),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": "6.18.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "",
            },
            "images": [
                {
                    "names": [
                        f"registry.example/team-{k}/app@sha256:{uuid.uuid4().hex * 2}",
                        f"registry.example/team-{k}/app:v1.{k}",
                    ],
                    "sizeBytes": 10_000_000 * k,
                }
                for k in range(1, 21)
            ],
        },
    }


def create_nodes(cp: ControlPlane, nodes: list[dict[str, Any]], batch: int = 100) -> float:
    start = time.perf_counter()
    for k in range(0, len(nodes), batch):
        items = {"apiVersion": "v1", "kind": "List", "items": nodes[k : k + batch]}
        cp.kubectl("create", "-f", "-", "-o", "name", input=json.dumps(items), timeout=300)
    return time.perf_counter() - start


class Node:
    """The agent's node: a netns, its underlay, the forwarder to the API server."""

    def __init__(self, cp: ControlPlane, work: Path) -> None:
        self.cp = cp
        self.work = work
        self.ns, self.fd = underlay_netns("lxbench")
        self.rt = Rtnl(netns.netlink_socket_in(self.fd))
        port = cp.server.rsplit(":", 1)[1]
        self.forwarder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.k8s.apiforward",
                f"/var/run/netns/{self.ns}",
                "127.0.0.1",
                port,
                "127.0.0.1",
                port,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.forwarder.stdout is not None
        assert self.forwarder.stdout.readline().strip() == "ready"
        self.proc: subprocess.Popen[bytes] | None = None

    def routes(self) -> int:
        return sum(len(owned_routes.dump(self.rt, v, 76, 254)) for v in (4, 6))

    def start(self, mode: str) -> float:
        d = self.work / mode
        for sub in ("run", "state", "net.d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LOXI_CNI_STATE_DIR": str(d / "state"),
            "LOXI_CNI_RUN_DIR": str(d / "run"),
        }
        argv = [
            "ip",
            "netns",
            "exec",
            self.ns,
            PLUGIN,
            "agent",
            "--socket",
            str(d / "run/sock"),
            "--metrics",
            "off",
            "--kubeconfig",
            str(self.cp.kubeconfig),
            "--node-name",
            SELF,
            "--cni-conf-dir",
            str(d / "net.d"),
            "--cross-node",
            mode,
            "--resync",
            "5",
        ]
        self.socket = str(d / "run/sock")
        self.env = env
        self.log_path = d / "agent.log"
        self.log = self.log_path.open("wb")
        start = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log)
        return start

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [PLUGIN, "status", "--json", "--socket", self.socket],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        try:
            cross: dict[str, Any] = json.loads(out).get("crossNode", {})
            return cross
        except ValueError:
            return {}

    def rss(self) -> dict[str, int]:
        assert self.proc is not None
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) // 1024
        return fields

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.log.close()
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                PLUGIN,
                "uninstall",
                "--force",
                "--cni-conf-dir",
                "",
                "--tree-dir",
                str(self.work / "trees"),
                "--cni-bin-dir",
                str(self.work / "bin"),
            ],
            capture_output=True,
            env=self.env,
            timeout=60,
        )

    def close(self) -> None:
        self.rt.close()
        os.close(self.fd)
        self.forwarder.kill()
        self.forwarder.wait()
        subprocess.run(["ip", "netns", "del", self.ns], check=False)


def wait(what: str, probe: Any, timeout: float = 120, step: float = 0.005) -> float:
    start = time.perf_counter()
    while not probe():
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)
    return time.perf_counter()


SYNC_LINE = re.compile(r"cross-node sync: .* (\d+) requests .* in ([0-9.]+) s")


class SyncLog:
    """The agent's log lines of syncs that changed something: requests and seconds each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def new(self) -> list[tuple[int, float]]:
        found = SYNC_LINE.findall(self.path.read_text(errors="replace"))
        fresh = found[self.seen :]
        self.seen = len(found)
        return [(int(r), float(t)) for r, t in fresh]

    def next(self) -> tuple[int, float, float]:
        """Wait for the next such sync: (requests, its seconds, when it was seen)."""
        box: list[tuple[int, float]] = []

        def logged() -> bool:
            box.extend(self.new())
            return bool(box)

        seen = wait("a sync that changes something", logged, step=0.002)
        requests, seconds = box[0]
        return requests, seconds, seen


def patch_ips(cp: ControlPlane, name: str, ips: tuple[str, str]) -> None:
    addresses = [{"type": "InternalIP", "address": ip} for ip in ips]
    addresses.append({"type": "Hostname", "address": name})
    patch = json.dumps({"status": {"addresses": addresses}})
    cp.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", patch)


def run_mode(cp: ControlPlane, node: Node, mode: str, count: int) -> dict[str, Any]:
    want = 2 * count
    start = node.start(mode)
    log = SyncLog(node.log_path)
    requests, seconds, _ = log.next()
    programmed = wait("every route", lambda: node.routes() == want)
    status = node.status()
    if status["peersProgrammed"] != count:
        raise SystemExit(f"{mode}: {status['peersProgrammed']} of {count} peers: {status}")
    rows: dict[str, Any] = {
        "mode": mode,
        "start -> programmed s": programmed - start,
        "first sync s": seconds,
        "first sync requests": requests,
    }
    # a periodic resync, nothing changed (reads only: no log line, the status says)
    syncs = status["syncs"]
    wait("a resync", lambda: node.status()["syncs"] > syncs, step=0.05)
    status = node.status()
    rows["resync s"], rows["resync requests"] = (
        status["lastSyncSeconds"],
        status["lastSyncRequests"],
    )
    # one Node's InternalIPs change (vxlan: its FDB entries; routes: its routes)
    t0 = time.perf_counter()
    patch_ips(cp, "bench-0", ("10.0.250.1", "fd00:50::fa:1"))
    requests, _, seen = log.next()
    rows["node changed s"], rows["node changed requests"] = seen - t0, requests
    # one added, one deleted: the count of routes tells when the kernel has it
    t0 = time.perf_counter()
    cp.kubectl("create", "-f", "-", input=json.dumps(node_object("bench-new", count)))
    rows["node added s"] = wait("the new node", lambda: node.routes() == want + 2) - t0
    rows["node added requests"] = log.next()[0]
    t0 = time.perf_counter()
    cp.kubectl("delete", "node", "bench-new")
    rows["node deleted s"] = wait("the node gone", lambda: node.routes() == want) - t0
    rows["node deleted requests"] = log.next()[0]
    rss = node.rss()
    rows["RSS MiB"], rows["peak RSS MiB"] = rss["VmRSS"], rss["VmHWM"]
    node.stop()
    patch_ips(cp, "bench-0", ("10.0.2.1", "fd00:50::2"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--modes", default="vxlan,routes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bin_dir = find_binaries(build=True)
    if bin_dir is None:
        raise SystemExit("no Kubernetes binaries: run `make k8s-deps`")
    work = Path(tempfile.mkdtemp(prefix="loxi-cluster-bench-"))
    results = []
    with ControlPlane(bin_dir) as cp:
        for name in ("crd.yaml", "rbac.yaml"):
            cp.kubectl("apply", "-f", str(REPO / "deploy" / name))
        me = node_object(SELF, 0, ("10.0.0.1", "fd00:50::1"))
        me["spec"] = {"podCIDR": "10.127.0.0/24", "podCIDRs": ["10.127.0.0/24", "fd00:244:1::/64"]}
        nodes = [me] + [node_object(f"bench-{i}", i) for i in range(args.nodes)]
        created = create_nodes(cp, nodes)
        size = len(cp.kubectl("get", "nodes", "-o", "json", timeout=300).stdout)
        node = Node(cp, work)
        try:
            for mode in args.modes.split(","):
                results.append(run_mode(cp, node, mode, args.nodes))
        finally:
            node.close()
    summary = {"nodes": args.nodes, "create s": created, "list bytes": size, "rows": results}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(
        f"{args.nodes} dual-stack Nodes (+ the agent's own) created in {created:.1f} s; "
        f"a full list is {size / 1e6:.1f} MB of JSON"
    )
    keys = [k for k in results[0] if k != "mode"]
    print(f"{'':<24}" + "".join(f"{r['mode']:>12}" for r in results))
    for key in keys:
        cells = "".join(
            f"{r[key]:>12.3f}" if isinstance(r[key], float) else f"{r[key]:>12}" for r in results
        )
        print(f"{key:<24}{cells}")


if __name__ == "__main__":
    main()
