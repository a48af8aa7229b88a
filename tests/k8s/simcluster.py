"""A simulated cluster on the real API server, for the cross-node tests::

      pod1            pod2                                      pod3
       |               |                                         |
    node1 (netns)   node2 (netns)                             node3 (netns)
     eth0 .1         eth0 .2     [ host .100: optional ]        eth0 .3
        \\             /             /                            |
         [ switch: bridge br0 ]---eth0 [ router ] eth1 ------------+
           underlay A (.0/24, ::/64)   .254   .254    underlay B
                                  10.96.0.1 on lo: the API server

Each simulated node is a network namespace with its own agent process (Kubernetes mode, its
own node name, socket, state and run dirs, CNI conf dir and metrics on its own loopback), a
Node object the test creates (pod CIDRs, InternalIPs) and a Pod object in kube-system its
token is bound to, so the token names the node as a DaemonSet pod's does. node1 and node2
share underlay A; node3 sits behind the router on underlay B. The agents reach the API server
at 10.96.0.1 on the router's loopback, which ``tests.k8s.apiforward`` forwards to the API
server on the host's loopback: their API traffic crosses the underlay. A real kubelet node
(the host itself) can join through a veth into the switch (``join_host``).

Every address comes from ranges no route of the host uses, and everything made here (netns,
links, host addresses and routes, processes, API objects) is removed by ``destroy``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from tests.support.agent import LocalAgent
from tests.support.host import unrouted
from tests.support.plugin import PLUGIN
from tests.support.simnet import add_netns, forwarding, ip_batch, pings, tcp_socket_in
from tests.support.simnet import transfer as transfer  # the cross-node tests' import
from tests.support.waiting import wait_for

from .cluster import REPO, masq_table, template_from_configmap
from .controlplane import ControlPlane

API_VIP = "10.96.0.1"  # a name of the API server's certificate; held by the router
PROTO = 76  # the overlay's route protocol
METRICS = "127.0.0.1:9617"  # in each node's own netns


def free_octets(prefix: str, count: int) -> list[int]:
    """``count`` values X for which ``prefix.X.0/24`` overlaps no route of the host."""
    found: list[int] = []
    candidates = [IPv4Network(f"{prefix}.{x}.0/24") for x in range(10, 250)]
    while len(found) < count:
        net = unrouted(c for c in candidates if c.network_address.packed[2] not in found)
        assert net is not None, f"no {count} free {prefix}.X.0/24"
        found.append(net.network_address.packed[2])
    return found


@dataclass
class Underlay:
    v4: IPv4Network
    v6: IPv6Network

    def ip(self, host: int) -> tuple[IPv4Address, IPv6Address]:
        return self.v4[host], self.v6[host]


@dataclass
class Pod:
    name: str
    node: SimNode
    container_id: str
    ips: dict[int, str] = field(default_factory=dict)  # version -> address
    mtu: int = 0

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.name}"


@dataclass
class SimNode(LocalAgent):
    index: int
    name: str
    ns: str
    underlay: Underlay
    pod4: IPv4Network
    pod6: IPv6Network
    root: Path
    mode: str = ""
    proc: subprocess.Popen[bytes] | None = None
    pods: list[Pod] = field(default_factory=list)
    kubeconfig: Path | None = None
    token: str = ""
    uid: str = ""

    @property
    def ipv4(self) -> IPv4Address:
        return self.underlay.ip(self.index)[0]

    @property
    def ipv6(self) -> IPv6Address:
        return self.underlay.ip(self.index)[1]

    @property
    def pod_cidrs(self) -> list[str]:
        return [str(self.pod4), str(self.pod6)]

    # -- where this node's agent keeps things (fresh for each mode)
    @property
    def workdir(self) -> Path:
        return self.root / (self.mode or "none")

    @property
    def env(self) -> dict[str, str]:
        return {
            "LOXI_CNI_SOCKET": self.socket,
            "LOXI_CNI_STATE_DIR": str(self.state_dir),
            "LOXI_CNI_RUN_DIR": str(self.workdir / "run"),
        }

    # -- the API object
    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name}},
            "spec": {"podCIDR": str(self.pod4), "podCIDRs": self.pod_cidrs},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": str(self.ipv4)},
                    {"type": "InternalIP", "address": str(self.ipv6)},
                    {"type": "Hostname", "address": self.name},
                ]
            },
        }

    # -- the agent
    def start_agent(
        self,
        mode: str,
        template: dict[str, Any],
        *,
        wait: bool = True,
        extra: tuple[str, ...] = (),
    ) -> None:
        assert self.kubeconfig is not None
        self.mode = mode
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        argv = self.agent_argv(
            self.kubeconfig, self.name, self.write_template(template),
            metrics=METRICS, grace_period="600",
        )  # fmt: skip
        self.spawn_agent(["ip", "netns", "exec", self.ns, *argv, "--cross-node", mode, *extra])
        if wait:
            self.wait_synced()

    def wait_synced(self, timeout: float = 30) -> dict[str, Any]:
        def synced() -> dict[str, Any] | None:
            self.check_running(f"agent of {self.name}")
            cross = self.status().get("crossNode") or {}
            return cross if cross.get("lastSync") and self.conf_path.exists() else None

        return wait_for(f"the agent of {self.name} to sync", synced, timeout)

    def metrics(self) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, "curl", "-sf", f"http://{METRICS}/metrics"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout

    def uninstall(self, *extra: str) -> dict[str, Any]:
        """The documented uninstall step, run in the node's netns (the tree and bin dirs its
        own: nothing was installed there, and the host's must stay untouched)."""
        out = subprocess.run(
            [
                "ip", "netns", "exec", self.ns, PLUGIN, "uninstall", "--json", *extra,
                "--cni-conf-dir", str(self.conf_dir), "--tree-dir", str(self.root / "trees"),
                "--cni-bin-dir", str(self.root / "bin"),
            ],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        return dict(json.loads(out.stdout))

    # -- pods through the installed plugin and this node's agent
    def cni(self, command: str, pod: Pod, netns: str | None = None) -> dict[str, Any]:
        return self.exec_cni(
            command,
            pod.container_id,
            pod.netns_path if netns is None else netns,
            wrapper=("ip", "netns", "exec", self.ns),
            what=f"{command} on {self.name}",
        )

    def add_pod(self, tag: str) -> Pod:
        pod = Pod(f"lxs-{tag}-p{self.index}", self, uuid.uuid4().hex)
        subprocess.run(["ip", "netns", "add", pod.name], check=True, timeout=30)
        self.pods.append(pod)
        result = self.cni("ADD", pod)
        for ip in result["ips"]:
            iface = ipaddress.ip_interface(ip["address"])
            pod.ips[iface.version] = str(iface.ip)
        (eth0,) = [i for i in result["interfaces"] if i.get("sandbox")]
        with IPRoute(netns=pod.name) as ipr:
            (link,) = ipr.link("get", ifname=eth0["name"])
            pod.mtu = int(link.get("IFLA_MTU"))
        return pod

    def del_pods(self) -> None:
        for pod in list(self.pods):
            if self.conf_path.exists():
                self.cni("DEL", pod)
            subprocess.run(["ip", "netns", "del", pod.name], capture_output=True, timeout=30)
            self.pods.remove(pod)

    # -- the kernel, read back (pyroute2, an oracle independent of loxi-cni)
    def ipr(self) -> IPRoute:
        return IPRoute(netns=self.ns)

    def overlay_routes(self, ipr: IPRoute | None = None) -> dict[str, dict[str, Any]]:
        """Our routes (protocol 76), by destination: gateway, device name, onlink. ``ipr``: a
        handle in this node's netns kept open by a caller polling in a tight loop."""
        if ipr is None:
            with self.ipr() as own:
                return self.overlay_routes(own)
        out: dict[str, dict[str, Any]] = {}
        names = {m["index"]: m.get("IFLA_IFNAME") for m in ipr.get_links()}
        for family in (2, 10):
            for m in ipr.get_routes(family=family, table=254):
                if m["proto"] == PROTO:
                    out[f"{m.get('RTA_DST')}/{m['dst_len']}"] = {
                        "gateway": m.get("RTA_GATEWAY"),
                        "dev": names.get(m.get("RTA_OIF")),
                        "onlink": bool(m["flags"] & 4),
                    }
        return out

    def links(self) -> dict[str, dict[str, Any]]:
        with self.ipr() as ipr:
            return {
                m.get("IFLA_IFNAME"): {
                    "index": m["index"],
                    "kind": m.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")),
                    "mac": m.get("IFLA_ADDRESS"),
                    "mtu": m.get("IFLA_MTU"),
                    "data": m.get(("IFLA_LINKINFO", "IFLA_INFO_DATA")),
                }
                for m in ipr.get_links()
            }

    def nft_table(self) -> list[dict[str, Any]] | None:
        return masq_table(self.ns)


@dataclass
class SimCluster:
    cp: ControlPlane
    agent_kubeconfig: Path
    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    nodes: list[SimNode] = field(default_factory=list)
    made_netns: list[str] = field(default_factory=list)
    host_link: str = ""
    host_routes: list[str] = field(default_factory=list)
    forwarder: subprocess.Popen[str] | None = None
    underlays: list[Underlay] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"lxs-{self.tag}-sw"

    @property
    def router(self) -> str:
        return f"lxs-{self.tag}-rt"

    @property
    def network(self) -> str:
        return f"sim-{self.tag}"

    def _netns(self, name: str) -> str:
        self.made_netns.append(name)
        return add_netns(name)

    # -- building
    def build(self, nodes: int = 3) -> None:
        """The namespaces and the underlay (the last node behind the router), the forwarder
        to the API server, and each node's Node object and agent identity."""
        a, b = free_octets("10.98", 2)
        pods = free_octets("10.203", nodes + 2)
        self.underlays = [
            Underlay(IPv4Network(f"10.98.{a}.0/24"), IPv6Network(f"fd98:{a:x}::/64")),
            Underlay(IPv4Network(f"10.98.{b}.0/24"), IPv6Network(f"fd98:{b:x}::/64")),
        ]
        sw, rt = self._netns(self.switch), self._netns(self.router)
        ua, ub = self.underlays
        ip_batch(sw, "link add br0 type bridge\nlink set br0 up\n")
        ip_batch(
            sw, f"link add r0 type veth peer name eth0 netns {rt}\nlink set r0 master br0 up\n"
        )
        ip_batch(
            rt,
            f"link set eth0 up\naddr add {ua.v4[254]}/24 dev eth0\n"
            f"addr add {ua.v6[0xFE]}/64 dev eth0 nodad\n"
            f"addr add {API_VIP}/32 dev lo\n",
        )
        forwarding(rt)
        for i in range(1, nodes + 1):
            behind = i == nodes
            under = ub if behind else ua
            node = SimNode(
                index=i,
                name=f"sim-{self.tag}-{i}",
                ns=self._netns(f"lxs-{self.tag}-n{i}"),
                underlay=under,
                pod4=IPv4Network(f"10.203.{pods[i - 1]}.0/24"),
                pod6=IPv6Network(f"fd03:{pods[i - 1]:x}::/64"),
                root=self.root / f"node{i}",
            )
            if behind:
                ip_batch(
                    rt,
                    f"link add eth1 type veth peer name eth0 netns {node.ns}\nlink set eth1 up\n"
                    f"addr add {ub.v4[254]}/24 dev eth1\n"
                    f"addr add {ub.v6[0xFE]}/64 dev eth1 nodad\n",
                )
            else:
                ip_batch(
                    sw,
                    f"link add n{i} type veth peer name eth0 netns {node.ns}\n"
                    f"link set n{i} master br0 up\n",
                )
            ip_batch(
                node.ns,
                f"link set eth0 up\naddr add {node.ipv4}/24 dev eth0\n"
                f"addr add {node.ipv6}/64 dev eth0 nodad\n"
                f"route add default via {under.v4[254]}\nroute add default via {under.v6[0xFE]}\n",
            )
            self.nodes.append(node)
        self._start_forwarder()
        for node in self.nodes:
            self.register(node)

    def _start_forwarder(self) -> None:
        port = self.cp.server.rsplit(":", 1)[1]
        self.forwarder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.k8s.apiforward",
                f"/var/run/netns/{self.router}",
                API_VIP,
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

    def kubeconfig(self, token: str, path: Path) -> Path:
        """A kubeconfig reaching the API server through the underlay, as the agent."""
        port = self.cp.server.rsplit(":", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        return self.cp.write_kubeconfig(path, {"token": token}, f"https://{API_VIP}:{port}")

    def create_node(self, node: SimNode) -> None:
        """POST the Node (no kubectl between: a test timing the reaction to the API event
        starts its clock right before the request)."""
        request = urllib.request.Request(
            f"{self.cp.server}/api/v1/nodes",
            data=json.dumps(node.manifest()).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30, context=self.cp.ssl_context()) as r:
            node.uid = json.load(r)["metadata"]["uid"]

    def register(self, node: SimNode) -> None:
        """The Node object, and a token bound to a Pod on it (the DaemonSet's pod, never run
        here): the token names the node, as the agent's does in a cluster."""
        self.create_node(node)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"loxi-cni-{node.name}", "namespace": "kube-system"},
            "spec": {
                "nodeName": node.name,
                "serviceAccountName": "loxi-cni",
                "containers": [{"name": "agent", "image": "loxi-cni:0.1.0"}],
            },
        }
        self.cp.kubectl("create", "-f", "-", input=json.dumps(pod))
        token = self.cp.kubectl(
            "create",
            "token",
            "loxi-cni",
            "-n",
            "kube-system",
            "--duration=2h",
            "--bound-object-kind=Pod",
            f"--bound-object-name=loxi-cni-{node.name}",
        ).stdout.strip()
        node.token = token
        node.kubeconfig = self.kubeconfig(token, node.root / "kubeconfig")

    def template(self) -> dict[str, Any]:
        """deploy/'s template (ipMasq on), this cluster's network name, no portmap."""
        template = template_from_configmap()
        template["name"] = self.network
        template["plugins"] = [p for p in template["plugins"] if p["type"] == "loxi-cni"]
        return template

    # -- the host as a node
    def join_host(self, host: int = 100) -> tuple[IPv4Address, IPv6Address]:
        """A veth from the host into the switch, with an address on underlay A and routes to
        underlay B through the router: the real kubelet node's underlay. Set up before its
        agent starts, so nothing it sends for the cluster can take the host's default route."""
        ua, ub = self.underlays
        self.host_link = f"lxh{self.tag}"
        v4, v6 = ua.ip(host)
        ip_batch(
            None, f"link add {self.host_link} type veth peer name h{host} netns {self.switch}\n"
        )
        ip_batch(self.switch, f"link set h{host} master br0 up\n")
        ip_batch(
            None,
            f"addr add {v4}/24 dev {self.host_link}\naddr add {v6}/64 dev {self.host_link} nodad\n"
            f"link set {self.host_link} up\n",
        )
        for route in (f"{ub.v4} via {ua.v4[254]}", f"{ub.v6} via {ua.v6[0xFE]}"):
            ip_batch(None, f"route add {route} dev {self.host_link}\n")
            self.host_routes.append(f"{route} dev {self.host_link}")
        return v4, v6

    # -- tearing down
    def delete_api_objects(self) -> None:
        for node in self.nodes:
            self.cp.kubectl(
                "delete", "node", node.name, "--ignore-not-found", "--wait=false", check=False
            )
            self.cp.kubectl(
                "delete",
                "pod",
                f"loxi-cni-{node.name}",
                "-n",
                "kube-system",
                "--ignore-not-found",
                "--wait=false",
                "--grace-period=0",
                "--force",
                check=False,
            )

    def destroy(self) -> None:
        for node in self.nodes:
            node.kill_agent()
            for pod in node.pods:
                subprocess.run(["ip", "netns", "del", pod.name], capture_output=True, timeout=30)
        if self.forwarder is not None:
            self.forwarder.kill()
            self.forwarder.wait(timeout=10)
        for route in self.host_routes:
            subprocess.run(["ip", "route", "del", *route.split()], capture_output=True, timeout=30)
        if self.host_link:
            subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, timeout=30)
        for name in reversed(self.made_netns):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.delete_api_objects()


def ping(ns: str, dst: str, count: int = 1, interval: float = 0.2, wait: float = 2) -> int:
    """Pings from netns ``ns`` to ``dst`` that were answered."""
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-q",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            str(wait),
            dst,
        ],
        capture_output=True,
        text=True,
        timeout=count * interval + wait + 30,
    ).stdout
    for line in out.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def ping_all(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    """Ping every (from netns, to address) at once, retrying a miss once (the first packet
    of a path may wait for neighbour resolution): {(netns, address): answered}."""
    results = pings(pairs, "-c", "2", "-i", "0.2", "-W", "2")
    for key, ok in results.items():
        if not ok:
            results[key] = ping(*key, count=3) > 0
    return results


def wait_until(what: str, probe: Any, timeout: float = 10, step: float = 0.02) -> float:
    """Poll ``probe`` until true; the seconds it took (AssertionError at ``timeout``)."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - start


class OneShotServer:
    """A TCP server in netns ``ns`` on ``ip``: accepts one connection, answers ``reply`` and
    records the peer's address (what the server sees: masqueraded or not)."""

    def __init__(self, ns: str, ip: str, reply: str) -> None:
        self.sock = tcp_socket_in(ns, ip)
        self.sock.bind((ip, 0))
        self.sock.listen(1)
        self.sock.settimeout(20)
        self.port = int(self.sock.getsockname()[1])
        self.peer = ""
        self.reply = reply
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, addr = self.sock.accept()
        except OSError:
            return
        with conn:
            self.peer = addr[0]
            conn.sendall(self.reply.encode() + b"\n")

    def close(self) -> str:
        """Stop; the peer's address ("" if none came)."""
        self.thread.join(timeout=25)
        self.sock.close()
        return self.peer


def fetch(ns: str, ip: str, port: int) -> str:
    """Connect from netns ``ns`` to ``ip``:``port`` and read until the server closes."""
    with tcp_socket_in(ns, ip) as sock:
        sock.settimeout(10)
        sock.connect((ip, port))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.decode().strip()
