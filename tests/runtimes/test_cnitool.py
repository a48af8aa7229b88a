"""libcni itself (containernetworking/cni v1.3.0, CNI 1.1) through its cnitool.

cnitool reads the conflist from NETCONFPATH, finds plugins on CNI_PATH, passes CAP_ARGS as
runtimeConfig to the plugins that declare the capability, derives the container ID from the
netns path, and keeps its result cache in /var/lib/cni/results: it runs in a private mount
namespace with a temp dir bound over /var/lib/cni, so the host's cache is untouched.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.plugin import PLUGIN
from tests.support.processes import sh

from .helpers import CNITOOL, Network, in_private_mounts, ipv4_of

VERSION = "1.1.0"  # libcni v1.3.0 speaks CNI 1.1: GC and STATUS included


MakeNetns = Callable[[], str]


@pytest.fixture
def make_netns() -> Iterator[MakeNetns]:
    """Named netns on demand (cnitool takes a netns path), all deleted after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"loxirt-{uuid.uuid4().hex[:8]}"
        sh(["ip", "netns", "add", name])
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def cnitool(
    net: Network, verb: str, netns: str, *, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    net.cache_dir.mkdir(parents=True, exist_ok=True)
    full_env = {
        "PATH": os.environ["PATH"],
        "NETCONFPATH": str(net.conf_dir),
        "CNI_PATH": str(net.bin_dir),
        **env,
    }
    argv = in_private_mounts(
        {net.cache_dir: "/var/lib/cni"}, [CNITOOL, verb, net.name, f"/var/run/netns/{netns}"]
    )
    return sh(argv, env=full_env, check=check)


def container_id(netns: str) -> str:
    """cnitool's container ID: "cnitool-" + the first 10 bytes of sha512(netns path), in hex."""
    return "cnitool-" + hashlib.sha512(f"/var/run/netns/{netns}".encode()).hexdigest()[:20]


def in_ns(netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh(["ip", "netns", "exec", netns, *cmd], check=check, timeout=30)


def cache_entry(net: Network, cid: str) -> dict[str, Any]:
    path = net.cache_dir / "results" / f"{net.name}-{cid}-eth0"
    entry: dict[str, Any] = json.loads(path.read_text())
    return entry


def test_add_check_del_with_capabilities_and_cache(network: Network, make_netns: MakeNetns) -> None:
    ns = make_netns()
    cid = container_id(ns)
    network.install_bin()
    network.write_conflist(VERSION, capabilities={"ips": True, "mac": True})
    wanted_ip = str(network.subnet.network_address + 77)
    wanted_mac = "02:98:77:00:00:01"
    cap_args = json.dumps({"ips": [f"{wanted_ip}/24"], "mac": wanted_mac})

    added = cnitool(network, "add", ns, CAP_ARGS=cap_args)
    result = json.loads(added.stdout)
    assert result["cniVersion"] == VERSION
    (ip,) = result["ips"]
    assert (ip["address"], ip["gateway"]) == (f"{wanted_ip}/24", network.gateway)
    pod_if = result["interfaces"][ip["interface"]]
    assert (pod_if["name"], pod_if["sandbox"], pod_if["mac"]) == (
        "eth0", f"/var/run/netns/{ns}", wanted_mac,
    )  # fmt: skip

    # Inside the netns: the requested address and MAC, the gateway reachable.
    assert ipv4_of(in_ns(ns, "ip", "-o", "-4", "addr", "show", "eth0").stdout) == [
        f"{wanted_ip}/24"
    ]
    assert in_ns(ns, "cat", "/sys/class/net/eth0/address").stdout.strip() == wanted_mac
    assert in_ns(ns, "ping", "-n", "-c1", "-W2", network.gateway, check=False).returncode == 0
    assert network.reservations() == {wanted_ip: cid}
    (veth,) = network.host_veths()
    assert veth in [i["name"] for i in result["interfaces"]]

    # libcni cached the attachment: the result, the config, the capability args.
    assert network.cached(network.cache_dir) == [f"{network.name}-{cid}-eth0"]
    entry = cache_entry(network, cid)
    assert [entry[k] for k in ("containerId", "ifName", "networkName")] == [
        cid, "eth0", network.name,
    ]  # fmt: skip
    assert entry["result"]["ips"] == result["ips"]
    assert json.loads(base64.b64decode(entry["config"]))["name"] == network.name
    assert entry["capabilityArgs"] == json.loads(cap_args)

    # CHECK runs with the cached result as prevResult; it must notice a lost address.
    cnitool(network, "check", ns, CAP_ARGS=cap_args)
    in_ns(ns, "ip", "addr", "del", f"{wanted_ip}/24", "dev", "eth0")
    failed = cnitool(network, "check", ns, check=False, CAP_ARGS=cap_args)
    assert failed.returncode != 0
    assert wanted_ip in failed.stderr, failed.stderr

    cnitool(network, "del", ns, CAP_ARGS=cap_args)
    network.assert_nothing_left(cid)
    assert network.cached(network.cache_dir) == []
    assert "eth0" not in in_ns(ns, "ip", "-o", "link", "show").stdout


def test_gc_releases_cached_and_unknown_attachments(
    network: Network, make_netns: MakeNetns
) -> None:
    """`cnitool gc` names no valid attachment: libcni DELs what it cached, then sends GC.

    The GC has to release the attachment libcni never knew of too (an ADD made behind its
    back, as if a runtime had lost its cache).
    """
    known, stray = make_netns(), make_netns()
    network.install_bin()
    network.write_conflist(VERSION)
    cnitool(network, "add", known)
    stray_id = f"stray-{uuid.uuid4().hex[:8]}"
    conf = {"cniVersion": VERSION, "name": network.name, **network.plugin_conf()}
    direct = sh(
        [PLUGIN],
        input=json.dumps(conf),
        env={
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": stray_id,
            "CNI_NETNS": f"/var/run/netns/{stray}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(network.bin_dir),
        },
    )
    stray_ip = json.loads(direct.stdout)["ips"][0]["address"].split("/")[0]
    assert set(network.reservations().values()) == {container_id(known), stray_id}
    assert len(network.host_veths()) == 2
    assert len(network.cached(network.cache_dir)) == 1

    cnitool(network, "gc", known)
    assert stray_ip not in network.reservations()
    assert network.cached(network.cache_dir) == []
    for ns in (known, stray):
        assert "eth0" not in in_ns(ns, "ip", "-o", "link", "show").stdout
    network.assert_nothing_left(container_id(known), stray_id)


def test_status_ready_then_not(network: Network, make_netns: MakeNetns, tmp_path: Path) -> None:
    """STATUS through libcni: ready while the IPAM store is usable, loxi-cni's error when not.

    (The error is code 50, "data dir unusable"; cnitool prints only its message.)
    """
    ns = make_netns()
    network.install_bin()
    network.write_conflist(VERSION)
    cnitool(network, "status", ns)

    broken = tmp_path / "not-a-dir"
    broken.write_text("")
    ipam = {**network.plugin_conf()["ipam"], "dataDir": str(broken)}
    network.write_conflist(VERSION, ipam=ipam)
    failed = cnitool(network, "status", ns, check=False)
    assert failed.returncode != 0
    assert "data dir unusable" in failed.stderr, failed.stderr
    assert network.cached(network.cache_dir) == []
