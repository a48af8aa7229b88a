"""A simulated cluster for the overlay tests: nodes as network namespaces, each with a pod.

::

      pod1          pod2                                  pod3
       |             |                                     |
     cni0 node1    cni0 node2                             cni0 node3
       eth0          eth0                                   eth0 192.168.60.3, fd00:60::3
        \\            /                                      |
         [ switch: bridge ] --- eth0 [ router ] eth1 ---------+
    192.168.50.0/24, fd00:50::/64      .254/::fe  192.168.60.0/24, fd00:60::/64

node1 and node2 share a subnet (one L2 segment through the switch); node3 is behind the
router, on another subnet. Node N owns the pod CIDRs 10.244.N.0/24 and fd00:244:N::/64: its
bridge ``cni0`` holds the gateways (.1, ::1) and its pod holds .2 and ::2. Everything is made
with ``ip`` (plain netlink), never with loxi-cni, and removed by ``destroy``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from pyroute2 import IPRoute

from loxicni.net import netns, overlay
from loxicni.net.ip import IPAddress
from loxicni.net.peers import LocalNode, Peer
from tests.support import simnet
from tests.support.counting_rtnl import CountingRtnl
from tests.support.simnet import add_netns, forwarding, ip_batch, pings


@dataclass
class Node:
    index: int
    ns: str  # the node's netns name
    pod_ns: str
    subnet: int  # 50 or 60: the third octet / second group of its underlay addresses
    fd: int = -1
    rt: CountingRtnl = field(init=False)

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def ipv4(self) -> IPv4Address:
        return IPv4Address(f"192.168.{self.subnet}.{self.index}")

    @property
    def ipv6(self) -> IPv6Address:
        return IPv6Address(f"fd00:{self.subnet}::{self.index}")

    @property
    def pod_ips(self) -> tuple[IPAddress, IPAddress]:
        return ip_address(f"10.244.{self.index}.2"), ip_address(f"fd00:244:{self.index}::2")

    @property
    def peer(self) -> Peer:
        return Peer(
            name=self.name,
            node_ips=(self.ipv4, self.ipv6),
            pod_cidrs=(
                ip_network(f"10.244.{self.index}.0/24"),
                ip_network(f"fd00:244:{self.index}::/64"),
            ),
        )

    def local(self) -> LocalNode:
        return overlay.local_node(self.rt, self.name, self.peer.node_ips, self.peer.pod_cidrs)

    def pyr(self) -> IPRoute:
        return IPRoute(netns=self.ns)


@dataclass
class Cluster:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    nodes: list[Node] = field(default_factory=list)
    made: list[str] = field(default_factory=list)  # netns names, removed by destroy

    @property
    def switch(self) -> str:
        return f"ovl-{self.tag}-sw"

    @property
    def router(self) -> str:
        return f"ovl-{self.tag}-rt"

    def _netns(self, name: str) -> str:
        self.made.append(name)
        return add_netns(name)

    def build(self) -> None:
        sw, router = self._netns(self.switch), self._netns(self.router)
        ip_batch(sw, "link add br0 type bridge\nlink set br0 up\n")
        ip_batch(
            sw,
            f"link add sr type veth peer name eth0 netns {router}\nlink set sr master br0 up\n",
        )
        ip_batch(
            router,
            "link set eth0 up\n"
            "addr add 192.168.50.254/24 dev eth0\naddr add fd00:50::fe/64 dev eth0 nodad\n",
        )
        forwarding(router)
        for index, subnet in ((1, 50), (2, 50), (3, 60)):
            node = Node(index, f"ovl-{self.tag}-n{index}", f"ovl-{self.tag}-p{index}", subnet)
            self._netns(node.ns)
            if subnet == 50:
                ip_batch(
                    sw,
                    f"link add s{index} type veth peer name eth0 netns {node.ns}\n"
                    f"link set s{index} master br0 up\n",
                )
            else:
                ip_batch(
                    router,
                    f"link add eth1 type veth peer name eth0 netns {node.ns}\n"
                    "link set eth1 up\naddr add 192.168.60.254/24 dev eth1\n"
                    "addr add fd00:60::fe/64 dev eth1 nodad\n",
                )
            ip_batch(
                node.ns,
                "link set eth0 up\n"
                f"addr add {node.ipv4}/24 dev eth0\naddr add {node.ipv6}/64 dev eth0 nodad\n"
                f"route add default via 192.168.{subnet}.254\n"
                f"route add default via fd00:{subnet}::fe\n",
            )
            forwarding(node.ns)
            node.fd = netns.open_netns(f"/var/run/netns/{node.ns}")
            node.rt = CountingRtnl(netns.netlink_socket_in(node.fd))
            self.nodes.append(node)

    def add_pods(self, mtu: int) -> None:
        """A pod per node, its interface (and the host's end) at ``mtu``."""
        for node in self.nodes:
            pod = self._netns(node.pod_ns)
            n = node.index
            ip_batch(
                node.ns,
                "link add cni0 type bridge\nlink set cni0 up\n"
                f"addr add 10.244.{n}.1/24 dev cni0\naddr add fd00:244:{n}::1/64 dev cni0 nodad\n"
                f"link add veth{n} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {pod}\n"
                f"link set veth{n} master cni0 up\n",
            )
            ip_batch(
                pod,
                "link set eth0 up\n"
                f"addr add 10.244.{n}.2/24 dev eth0\naddr add fd00:244:{n}::2/64 dev eth0 nodad\n"
                f"route add default via 10.244.{n}.1\nroute add default via fd00:244:{n}::1\n",
            )

    def destroy(self) -> None:
        for node in self.nodes:
            node.rt.close()
            if node.fd >= 0:
                os.close(node.fd)
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], check=False)

    def peers(self) -> list[Peer]:
        return [node.peer for node in self.nodes]


def ping_all(pairs: list[tuple[str, IPAddress]]) -> dict[tuple[str, str], bool]:
    """Ping every (from netns, to address) once, all at once: {(netns, address): answered}."""
    return pings([(ns, str(dst)) for ns, dst in pairs], "-c", "1", "-W", "3")


def transfer(client: Node, server: Node, version: int, size: int = 1 << 20) -> str:
    """Send ``size`` random bytes over TCP from ``client``'s pod to ``server``'s pod, checking
    that all arrived intact; the source address the server saw."""
    dst = server.pod_ips[0 if version == 4 else 1]
    return simnet.transfer(client.pod_ns, server.pod_ns, str(dst), size)


SIGNALS = {
    "Ip FragFails",  # IPv4: a packet too big for the next hop, DF set: dropped...
    "Icmp OutDestUnreachs",  # ... and "fragmentation needed" sent back
    "Ip FragCreates",
    "Ip6FragFails",
    "Icmp6OutPktTooBigs",  # IPv6: "packet too big" sent back
}


def path_mtu_signals(ns: str) -> dict[str, int]:
    """The counters that move when the node of netns ``ns`` forwards a packet too big for its
    next hop (it drops it and asks the sender for smaller ones: the ICMP a firewall may eat,
    leaving a black hole)."""
    out: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/snmp6"):
        text = subprocess.run(
            ["ip", "netns", "exec", ns, "cat", path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        lines = text.splitlines()
        if path.endswith("6"):
            pairs = [line.split() for line in lines]
            out.update({k: int(v) for k, v in pairs if k in SIGNALS})
            continue
        for names, values in zip(lines[::2], lines[1::2], strict=True):
            proto = names.split(":")[0]
            for key, value in zip(names.split()[1:], values.split()[1:], strict=True):
                if f"{proto} {key}" in SIGNALS:
                    out[f"{proto} {key}"] = int(value)
    return out


def set_pod_mtu(node: Node, mtu: int) -> None:
    """The MTU of ``node``'s pod interface and of its host end."""
    ip_batch(node.pod_ns, f"link set eth0 mtu {mtu}\n")
    ip_batch(node.ns, f"link set veth{node.index} mtu {mtu}\n")
