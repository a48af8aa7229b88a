"""ipMasq against the real kernel: state as ``nft -j list`` shows it, and real forwarded traffic.

Every test uses networks of its own (``loxitest-<random>``) and looks only at elements tagged
with them, so it neither disturbs nor is disturbed by other users of ``table inet loxi-cni``;
the table itself is deleted afterwards only if it did not exist before and is empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loxicni.net import masq, netns, nft

V4 = ip_interface("10.99.0.5/24")
V6 = ip_interface("fd99::5/64")


# --- reading the table the way a user would --------------------------------------------------


def nft_table() -> list[dict[str, Any]]:
    """``nft -j list table inet loxi-cni`` as a list of objects ([] when there is no table)."""
    proc = subprocess.run(
        ["nft", "-j", "list", "table", "inet", masq.TABLE], capture_output=True, text=True
    )
    if proc.returncode != 0:
        assert "No such file or directory" in proc.stderr, proc.stderr
        return []
    objs: list[dict[str, Any]] = json.loads(proc.stdout)["nftables"]
    return objs


def elements(network: str) -> dict[str, set[tuple[str, str]]]:
    """Set name -> {(element as text, comment)} for elements tagged with ``network``."""
    out: dict[str, set[tuple[str, str]]] = {}
    for obj in nft_table():
        if "set" not in obj:
            continue
        for item in obj["set"].get("elem", []):
            if isinstance(item, dict) and "elem" in item:
                comment = item["elem"].get("comment", "")
                if unquote(comment.split(" ")[0]) == network:
                    text = nft.element_text(item["elem"]["val"])
                    out.setdefault(obj["set"]["name"], set()).add((text, comment))
    return out


def rules() -> list[dict[str, Any]]:
    return [obj["rule"] for obj in nft_table() if "rule" in obj]


@pytest.fixture
def new_net() -> Iterator[Callable[[], str]]:
    """Hands out fresh network names; removes whatever they left behind, then maybe the table."""
    existed = bool(nft_table())
    names: list[str] = []

    def make() -> str:
        names.append(f"loxitest-{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    for net in names:
        for cid, ifname in masq.masqueraded_attachments(net):
            masq.remove_masquerade(net, cid, ifname)
    if not existed:
        with masq._locked():  # nobody may add elements between our check and the delete
            if not any(obj.get("set", {}).get("elem") for obj in nft_table()):
                subprocess.run(["nft", "delete", "table", "inet", masq.TABLE], check=False)


# --- state -----------------------------------------------------------------------------------


def test_add_creates_table_rules_and_tagged_elements(new_net: Callable[[], str]) -> None:
    net = new_net()
    masq.add_masquerade(net, "c1", "eth0", [V4, V6])
    tag = f"{net} c1 eth0"
    assert elements(net) == {
        "pods4": {("10.99.0.5", tag)},
        "local4": {("10.99.0.5 . 10.99.0.0/24", tag)},
        "pods6": {("fd99::5", tag)},
        "local6": {("fd99::5 . fd99::/64", tag)},
    }
    chain = next(o["chain"] for o in nft_table() if o.get("chain", {}).get("name") == "postrouting")
    assert (chain["type"], chain["hook"], chain["prio"]) == ("nat", "postrouting", 100)
    text = json.dumps(rules())
    assert len(rules()) == 2
    assert all(any("masquerade" in e for e in r["expr"]) for r in rules())
    for needle in ('"@pods4"', '"@local4"', '"224.0.0.0"', '"@pods6"', '"@local6"', '"ff00::"'):
        assert needle in text


def test_add_twice_is_idempotent_and_writes_nothing(new_net: Callable[[], str]) -> None:
    net = new_net()
    masq.add_masquerade(net, "c1", "eth0", [V4, V6])
    before, handles = elements(net), [r["handle"] for r in rules()]
    masq.add_masquerade(net, "c1", "eth0", [V4, V6, V4])
    assert elements(net) == before
    assert [r["handle"] for r in rules()] == handles  # rules not re-created


def test_add_replaces_the_attachments_previous_addresses(new_net: Callable[[], str]) -> None:
    net = new_net()
    masq.add_masquerade(net, "c1", "eth0", [V4, V6])
    masq.add_masquerade(net, "c1", "eth0", [ip_interface("10.99.0.5/16")])
    tag = f"{net} c1 eth0"
    assert elements(net) == {
        "pods4": {("10.99.0.5", tag)},
        "local4": {("10.99.0.5 . 10.99.0.0/16", tag)},
    }


def test_host_route_address(new_net: Callable[[], str]) -> None:
    """A /32 reads back without a prefix; re-adding must still see it as unchanged."""
    net = new_net()
    host = ip_interface("10.99.7.7/32")
    masq.add_masquerade(net, "c1", "eth0", [host])
    first = elements(net)
    masq.add_masquerade(net, "c1", "eth0", [host])
    assert elements(net) == first
    masq.remove_masquerade(net, "c1", "eth0")
    assert elements(net) == {}


def test_remove_leaves_nothing_and_is_idempotent(new_net: Callable[[], str]) -> None:
    net = new_net()
    masq.add_masquerade(net, "c1", "eth0", [V4, V6])
    masq.remove_masquerade(net, "c1", "eth0")
    assert elements(net) == {}
    assert masq.masqueraded_attachments(net) == set()
    masq.remove_masquerade(net, "c1", "eth0")
    masq.remove_masquerade(net, "never-added", "eth0")
    assert len(rules()) == 2  # the shared rules stay for other attachments


def test_remove_without_table_succeeds(new_net: Callable[[], str]) -> None:
    table = nft_table()
    if any("elem" in obj["set"] for obj in table if "set" in obj):
        pytest.skip("table inet loxi-cni holds real attachments on this host")
    if table:  # an empty table left by earlier tests: nothing depends on it
        subprocess.run(["nft", "delete", "table", "inet", masq.TABLE], check=True)
    masq.remove_masquerade(new_net(), "c1", "eth0")
    assert masq.masqueraded_attachments("anything") == set()
    assert nft_table() == []  # DEL and GC do not create the table


def test_attachments_and_networks_are_independent(new_net: Callable[[], str]) -> None:
    a, b = new_net(), new_net()
    masq.add_masquerade(a, "c1", "eth0", [ip_interface("10.99.1.2/24")])
    masq.add_masquerade(a, "c1", "net1", [ip_interface("10.99.2.2/24")])
    masq.add_masquerade(a, "c2", "eth0", [ip_interface("10.99.1.3/24")])
    masq.add_masquerade(b, "c1", "eth0", [ip_interface("10.99.3.2/24")])
    assert masq.masqueraded_attachments(a) == {("c1", "eth0"), ("c1", "net1"), ("c2", "eth0")}
    assert masq.masqueraded_attachments(b) == {("c1", "eth0")}

    masq.remove_masquerade(a, "c1", "eth0")
    assert masq.masqueraded_attachments(a) == {("c1", "net1"), ("c2", "eth0")}
    assert elements(a)["pods4"] == {("10.99.2.2", f"{a} c1 net1"), ("10.99.1.3", f"{a} c2 eth0")}
    assert elements(b)["pods4"] == {("10.99.3.2", f"{b} c1 eth0")}


def test_address_taken_over_from_stale_attachment(new_net: Callable[[], str]) -> None:
    net = new_net()
    masq.add_masquerade(net, "old", "eth0", [ip_interface("10.99.4.2/16")])
    masq.add_masquerade(net, "new", "eth0", [ip_interface("10.99.4.2/24")])
    tag = f"{net} new eth0"
    assert elements(net) == {
        "pods4": {("10.99.4.2", tag)},
        "local4": {("10.99.4.2 . 10.99.4.0/24", tag)},  # the old /16 exemption is gone
    }
    masq.remove_masquerade(net, "old", "eth0")  # the stale DEL/GC must not hit the new owner
    assert masq.masqueraded_attachments(net) == {("new", "eth0")}


def test_gc_listing_round_trips_odd_and_long_identifiers(new_net: Callable[[], str]) -> None:
    net = new_net()
    long_net = net + "-" + "x" * 100  # does not fit in a comment: stored as a digest
    odd = ('ctr "quoted" %20 $x', "e:th/0")
    cid64 = "f" * 64
    masq.add_masquerade(net, *odd, [ip_interface("10.99.5.2/24")])
    masq.add_masquerade(long_net, cid64, "eth0", [ip_interface("10.99.5.3/24")])
    assert masq.masqueraded_attachments(net) == {odd}
    assert masq.masqueraded_attachments(long_net) == {(cid64, "eth0")}
    masq.remove_masquerade(long_net, cid64, "eth0")
    assert masq.masqueraded_attachments(long_net) == set()
    assert masq.masqueraded_attachments(net) == {odd}


def test_concurrent_adds_and_removes_do_not_interfere(new_net: Callable[[], str]) -> None:
    net = new_net()
    n = 24

    def churn(i: int) -> None:
        addr = [ip_interface(f"10.99.6.{i + 1}/24"), ip_interface(f"fd99:6::{i + 1}/64")]
        masq.add_masquerade(net, f"c{i}", "eth0", addr)
        if i % 2:
            masq.remove_masquerade(net, f"c{i}", "eth0")
        masq.add_masquerade(net, f"c{i}", "eth0", addr)  # idempotent re-ADD
        if i % 3 == 0:
            masq.remove_masquerade(net, f"c{i}", "eth0")

    with ThreadPoolExecutor(8) as pool:  # each call opens its own lock fd, as processes do
        list(pool.map(churn, range(n)))
    kept = {i for i in range(n) if i % 3}
    assert masq.masqueraded_attachments(net) == {(f"c{i}", "eth0") for i in kept}
    assert {t for t, _ in elements(net)["pods4"]} == {f"10.99.6.{i + 1}" for i in kept}
    assert len(elements(net)["local6"]) == len(kept)
    assert len(rules()) == 2


# --- failures --------------------------------------------------------------------------------


def test_missing_nft_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nft, "SBIN_DIRS", str(tmp_path))
    with pytest.raises(nft.NftError) as info:
        masq.remove_masquerade("n", "c", "eth0")
    assert "nft" in info.value.what and "not found" in info.value.what


def test_nft_failure_carries_stderr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "nft"
    fake.write_text("#!/bin/sh\necho 'Error: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(nft.NftError) as info:
        masq.add_masquerade("n", "c", "eth0", [V4])
    assert info.value.details == "Error: Operation not permitted"


def test_identifiers_too_long_for_a_comment() -> None:
    with pytest.raises(masq.LabelTooLong):
        masq.add_masquerade("n", "c" * 200, "eth0", [V4])


@given(st.text(min_size=1), st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=15))
def test_tag_is_parseable_and_safe_to_quote(network: str, cid: str, ifname: str) -> None:
    try:
        tag = masq._tag(network, cid, ifname)
    except masq.LabelTooLong:  # only when percent-encoding blows up the IDs (non-ASCII)
        return
    assert len(tag) <= 128 and tag.isascii() and '"' not in tag and "\\" not in tag
    fields = tag.split(" ")
    assert len(fields) == 3
    assert unquote(fields[0]) == network or fields[0] == masq._net_digest(network)
    assert (unquote(fields[1]), unquote(fields[2])) == (cid, ifname)


CNI_ID = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*", fullmatch=True)


@given(CNI_ID, CNI_ID.filter(lambda s: len(s) <= 64), CNI_ID.filter(lambda s: len(s) <= 15))
def test_spec_conforming_ids_always_fit(network: str, cid: str, ifname: str) -> None:
    """Any network name, a 64-character container ID (the usual maximum), any ifname."""
    assert len(masq._tag(network, cid, ifname)) <= 128


# --- real traffic ----------------------------------------------------------------------------

POD_NS, OUT_NS = "loxitest-pod", "loxitest-out"
POD_HOST_IF, OUT_HOST_IF = "loxit-pod-h", "loxit-out-h"


def force_forwarding(ifname: str) -> Path:
    """The per-interface IPv6 forwarding switch (Linux 6.17+; absent before, and without IPv6)."""
    return Path(f"/proc/sys/net/ipv6/conf/{ifname}/force_forwarding")


SERVER = """
import socket, sys
host = sys.argv[1]
with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
    s.bind((host, 0)); s.listen(1); s.settimeout(10)
    print(s.getsockname()[1], flush=True)
    conn, peer = s.accept()
    conn.close()
    print(peer[0], flush=True)
"""
CLIENT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()"


def sh(*cmd: str, check: bool = True) -> None:
    subprocess.run(cmd, check=check, capture_output=True, timeout=30)


def _teardown_topology() -> None:
    for link in (POD_HOST_IF, OUT_HOST_IF):  # deleting one end removes the peer synchronously
        sh("ip", "link", "del", link, check=False)
    for ns in (POD_NS, OUT_NS):
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def topology() -> Iterator[None]:
    """pod (10.254.1.2, fd00:254:1::2) -- host -- out (10.254.2.2, fd00:254:2::2).

    Forwarding is enabled on our two host veths only (IPv4 ``forwarding`` is per input device;
    IPv6 uses ``force_forwarding``, kernel 6.17+), so the host's global settings are untouched.
    """
    _teardown_topology()  # leftovers of an interrupted run
    try:
        for side, host_if, n in (("pod", POD_HOST_IF, 1), ("out", OUT_HOST_IF, 2)):
            ns = f"loxitest-{side}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "addr", "add", f"10.254.{n}.1/24", "dev", host_if)
            sh("ip", "addr", "add", f"fd00:254:{n}::1/64", "dev", host_if, "nodad")
            sh("ip", "link", "set", host_if, "up")
            sh("sysctl", "-qw", f"net.ipv4.conf.{host_if}.forwarding=1")
            if force_forwarding(host_if).exists():
                sh("sysctl", "-qw", f"net.ipv6.conf.{host_if}.force_forwarding=1")
            sh("ip", "-n", ns, "addr", "add", f"10.254.{n}.2/24", "dev", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"fd00:254:{n}::2/64", "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", f"10.254.{n}.1")
            sh("ip", "-n", ns, "-6", "route", "add", "default", "via", f"fd00:254:{n}::1")
        yield
    finally:
        _teardown_topology()


def source_seen_by_server(dst: str, pod: str = POD_NS, out: str = OUT_NS) -> str:
    """Connect from the ``pod`` netns to a server on ``dst`` in the ``out`` netns; the peer
    address it accepted."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", out, sys.executable, "-c", SERVER, dst],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        subprocess.run(
            ["ip", "netns", "exec", pod, sys.executable, "-c", CLIENT, dst, port],
            check=True,
            timeout=15,
        )
        out, _ = server.communicate(timeout=15)
        return out.strip()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize(
    ("pod", "dst", "host"),
    [
        (ip_interface("10.254.1.2/24"), "10.254.2.2", "10.254.2.1"),
        (ip_interface("fd00:254:1::2/64"), "fd00:254:2::2", "fd00:254:2::1"),
    ],
    ids=["ipv4", "ipv6"],
)
def test_traffic_is_masqueraded_only_with_the_rule(
    topology: None,
    new_net: Callable[[], str],
    pod: IPv4Interface | IPv6Interface,
    dst: str,
    host: str,
) -> None:
    if pod.version == 6 and not force_forwarding(POD_HOST_IF).exists():
        pytest.skip(
            "this kernel has no per-interface IPv6 forwarding "
            f"(net.ipv6.conf.{POD_HOST_IF}.force_forwarding, Linux >= 6.17)"
        )
    net = new_net()
    assert source_seen_by_server(dst) == str(pod.ip)
    masq.add_masquerade(net, "pod", "eth0", [pod])
    assert source_seen_by_server(dst) == host
    masq.remove_masquerade(net, "pod", "eth0")
    assert source_seen_by_server(dst) == str(pod.ip)


def test_traffic_within_the_pods_subnet_is_not_masqueraded(
    topology: None, new_net: Callable[[], str]
) -> None:
    """With the pod's subnet declared as 10.254.0.0/16, 10.254.2.2 counts as inside it."""
    net = new_net()
    masq.add_masquerade(net, "pod", "eth0", [ip_interface("10.254.1.2/16")])
    assert source_seen_by_server("10.254.2.2") == "10.254.1.2"
    masq.add_masquerade(net, "pod", "eth0", [ip_interface("10.254.1.2/24")])
    assert source_seen_by_server("10.254.2.2") == "10.254.2.1"


# --- the cluster's pod networks (the agent's set), in a namespace of their own -----------------


@dataclass
class NodeNs:
    """A node netns with its own nftables, with a pod netns and an "elsewhere" netns behind it
    (pod 10.253.1.2 -- node -- 10.253.2.2 elsewhere)."""

    node: str
    pod: str
    out: str
    fd: int = -1

    def run(self, fn: Callable[[], Any]) -> Any:
        """``fn`` in the node's netns (nft included: it is forked from there)."""
        return netns.run_in(self.fd, fn)


@pytest.fixture
def node_ns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeNs]:
    monkeypatch.setenv("LOXI_CNI_RUN_DIR", str(tmp_path))
    tag = uuid.uuid4().hex[:6]
    node, pod, out = f"lxm-{tag}-n", f"lxm-{tag}-p", f"lxm-{tag}-o"
    try:
        for ns in (node, pod, out):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for side, n in ((pod, 1), (out, 2)):
            sh("ip", "-n", node, "link", "add", f"v{n}", "type", "veth", "peer", "eth0",
               "netns", side)  # fmt: skip
            sh("ip", "-n", node, "addr", "add", f"10.253.{n}.1/24", "dev", f"v{n}")
            sh("ip", "-n", node, "link", "set", f"v{n}", "up")
            sh("ip", "-n", side, "addr", "add", f"10.253.{n}.2/24", "dev", "eth0")
            sh("ip", "-n", side, "link", "set", "eth0", "up")
            sh("ip", "-n", side, "route", "add", "default", "via", f"10.253.{n}.1")
        sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        made = NodeNs(node, pod, out, netns.open_netns(f"/var/run/netns/{node}"))
        yield made
        os.close(made.fd)
    finally:
        for ns in (node, pod, out):
            sh("ip", "netns", "del", ns, check=False)


def test_cluster_networks_are_kept_exactly(node_ns: NodeNs) -> None:
    net, node, run = ip_network, node_ns.node, node_ns.run

    def listed() -> dict[str, set[str]]:
        argv = ["ip", "netns", "exec", node, "nft", "-j", "list", "table", "inet", masq.TABLE]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return {
            o["set"]["name"]: {nft.element_text(e) for e in o["set"].get("elem", [])}
            for o in json.loads(out)["nftables"]
            if o.get("set", {}).get("name") in ("cluster4", "cluster6")
        }

    # nothing to exempt and no table: none is made for it
    assert run(lambda: masq.set_cluster_networks([])) is False
    assert run(masq.delete_table_if_unused) is False
    nets = [net("10.244.1.0/24"), net("10.244.2.0/24"), net("10.245.0.0/16"),
            net("10.245.3.0/24"), net("fd00:244:1::/64")]  # fmt: skip
    assert run(lambda: masq.set_cluster_networks(nets)) is True
    # one inside another is left out (an interval set refuses overlaps)
    assert listed() == {
        "cluster4": {"10.244.1.0/24", "10.244.2.0/24", "10.245.0.0/16"},
        "cluster6": {"fd00:244:1::/64"},
    }
    assert run(lambda: masq.set_cluster_networks(nets)) is False  # read back, not written
    rules = subprocess.run(["ip", "netns", "exec", node, "nft", "list", "chain", "inet",
                            masq.TABLE, "postrouting"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    assert "ip daddr != @cluster4" in rules and "ip6 daddr != @cluster6" in rules
    assert "ipMasq v2" in rules
    # a node's CIDR grows over its neighbour's: one transaction replaces both
    grown = [net("10.244.0.0/22"), net("fd00:244:1::/64")]
    assert run(lambda: masq.set_cluster_networks(grown)) is True
    assert listed() == {"cluster4": {"10.244.0.0/22"}, "cluster6": {"fd00:244:1::/64"}}
    assert run(masq.cluster_networks) == {"10.244.0.0/22", "fd00:244:1::/64"}
    assert run(masq.delete_table_if_unused) is False  # it holds something
    assert run(lambda: masq.set_cluster_networks([])) is True
    assert run(masq.delete_table_if_unused) is True


def test_traffic_to_cluster_networks_is_not_masqueraded(node_ns: NodeNs) -> None:
    run = node_ns.run

    def seen() -> str:
        return source_seen_by_server("10.253.2.2", node_ns.pod, node_ns.out)

    run(lambda: masq.add_masquerade("n", "c", "eth0", [ip_interface("10.253.1.2/24")]))
    assert seen() == "10.253.2.1"  # leaving the pod's subnet: masqueraded
    run(lambda: masq.set_cluster_networks([ip_network("10.253.2.0/24")]))
    assert seen() == "10.253.1.2"  # another node's pods: the pod's own address
    run(lambda: masq.set_cluster_networks([]))
    assert seen() == "10.253.2.1"
