"""The bridge plugin in-process: ADD, CHECK and DEL of every CNI version, one call at a time.

These call ``BridgePlugin`` directly, in this test process, against a temporary netns: a failure
names the step that broke, with its traceback, where the exec tests of tests/integration (which
keep the runtime contract: exit codes, stdout, the agent) only show the JSON a call printed.
pyroute2 reads the kernel state back, as an oracle independent of our netlink code.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute, NetNS

from loxicni.cni.errors import CniError, Code
from loxicni.cni.request import Request, parse_request
from loxicni.cni.result import result_to_json
from loxicni.cni.version import SUPPORTED_VERSIONS, at_least
from loxicni.net.rtnl import Rtnl
from loxicni.plugin import hostveth, naming, records
from loxicni.plugin.bridge import BridgePlugin
from loxicni.plugin.config import KNOWN_ARGS


@dataclass
class Pod:
    netns: str
    path: str
    container_id: str


@dataclass
class Case:
    """A network config and what its ADD must leave in the kernel."""

    name: str
    conf: dict[str, Any]
    addresses: list[str]  # on the pod's eth0, with prefix
    routes: list[tuple[str, str | None]]  # (dst, gateway) via eth0, beyond the connected ones
    bridge_addresses: list[str]  # on the bridge


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Private state and run dirs, a bridge name and a pod netns, all removed afterwards."""
    monkeypatch.setenv("LOXI_CNI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOXI_CNI_RUN_DIR", str(tmp_path / "run"))
    tag = uuid.uuid4().hex[:8]
    netns = f"loxip-{tag}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        yield {"tag": tag, "netns": netns, "data": str(tmp_path / "ipam")}
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", f"lxpb{tag}"], capture_output=True)


def _cases(env: dict[str, str]) -> list[Case]:
    base = {"name": f"loxip-{env['tag']}", "type": "loxi-cni", "bridge": f"lxpb{env['tag']}"}
    v4 = {"type": "host-local", "subnet": "10.97.0.0/24", "dataDir": env["data"]}
    dual = {
        "type": "host-local",
        "ranges": [[{"subnet": "10.97.1.0/24"}], [{"subnet": "fd00:97:1::/64"}]],
        "routes": [{"dst": "10.0.0.0/8"}, {"dst": "fd00::/8"}],
        "dataDir": env["data"],
    }
    return [
        Case(
            "gateway",
            {**base, "isGateway": True, "ipam": v4},
            ["10.97.0.2/24"],
            [],
            ["10.97.0.1/24"],
        ),
        Case(
            "default-route",
            {**base, "isDefaultGateway": True, "mtu": 1400, "ipam": v4},
            ["10.97.0.2/24"],
            [("default", "10.97.0.1")],
            ["10.97.0.1/24"],
        ),
        Case(
            "dual-stack-routes",
            {**base, "isGateway": True, "ipam": dual},
            ["10.97.1.2/24", "fd00:97:1::2/64"],
            [("10.0.0.0/8", "10.97.1.1"), ("fd00::/8", "fd00:97:1::1")],
            ["10.97.1.1/24", "fd00:97:1::1/64"],
        ),
        Case("no-gateway", {**base, "ipam": v4}, ["10.97.0.2/24"], [], []),
    ]


def _request(command: str, conf: dict[str, Any], pod: Pod) -> Request:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": pod.path,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    return parse_request(env, json.dumps(conf).encode(), KNOWN_ARGS)


def _addresses(ipr: Any, index: int) -> list[str]:
    out = []
    for msg in ipr.get_addr(index=index):
        addr = msg.get("IFA_ADDRESS")
        if not addr.startswith("fe80"):
            out.append(f"{addr}/{msg['prefixlen']}")
    return sorted(out)


def _routes(ns: NetNS, index: int) -> list[tuple[str, str | None]]:
    out = []
    for family in (2, 10):
        for msg in ns.get_routes(family=family, oif=index, table=254):
            gw = msg.get("RTA_GATEWAY")
            if gw is None:
                continue  # connected routes, and IPv6's own
            dst = msg.get("RTA_DST")
            out.append((f"{dst}/{msg['dst_len']}" if dst else "default", gw))
    return sorted(out)


CASE_NAMES = ["gateway", "default-route", "dual-stack-routes", "no-gateway"]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_add_check_del(env: dict[str, str], case_name: str, version: str) -> None:
    case = next(c for c in _cases(env) if c.name == case_name)
    conf = {**case.conf, "cniVersion": version}
    pod = Pod(env["netns"], f"/var/run/netns/{env['netns']}", f"c{env['tag']}")
    plugin = BridgePlugin()

    # ADD: the result in the version asked, and the kernel holding what it says.
    result = plugin.add(_request("ADD", conf, pod))
    assert result.cni_version == version
    shaped = result_to_json(result, version)
    assert shaped["cniVersion"] == version
    assert sorted(str(ip.address) for ip in result.ips) == case.addresses
    with NetNS(env["netns"]) as ns:
        (eth0,) = ns.link_lookup(ifname="eth0")
        assert _addresses(ns, eth0) == case.addresses
        assert _routes(ns, eth0) == case.routes
        mtu = ns.get_links(eth0)[0].get("IFLA_MTU")
        assert mtu == case.conf.get("mtu", 1500)
    with IPRoute() as ipr:
        (bridge,) = ipr.link_lookup(ifname=case.conf["bridge"])
        assert _addresses(ipr, bridge) == case.bridge_addresses
        host = result.interfaces[1].name
        (host_index,) = ipr.link_lookup(ifname=host)
        link = ipr.get_links(host_index)[0]
        assert link.get("IFLA_MASTER") == bridge
        assert link.get("IFLA_IFALIAS") == naming.alias(conf["name"], pod.container_id, "eth0")
    record = records.load(naming.attachment_key(conf["name"], pod.container_id, "eth0"))
    assert record is not None and record.state == records.READY and record.host_veth == host

    # CHECK with the result as the runtime kept it (from 0.4.0 on).
    checked = {**conf, "prevResult": shaped}
    if at_least(version, "0.4.0"):
        plugin.check(_request("CHECK", checked, pod))

    # DEL: nothing of the attachment left, and a second DEL is fine.
    plugin.delete(_request("DEL", conf, pod))
    plugin.delete(_request("DEL", conf, pod))
    with NetNS(env["netns"]) as ns:
        assert ns.link_lookup(ifname="eth0") == []
    with Rtnl() as host_rt:
        assert hostveth.find(host_rt, "loxi", conf["name"], pod.container_id, "eth0") == []
    assert records.load(naming.attachment_key(conf["name"], pod.container_id, "eth0")) is None
    network_dir = Path(env["data"]) / conf["name"]
    assert (
        sorted(p.name for p in network_dir.iterdir() if p.name[0].isdigit() or ":" in p.name) == []
    )


def test_check_names_what_differs(env: dict[str, str]) -> None:
    (case,) = [c for c in _cases(env) if c.name == "gateway"]
    conf = {**case.conf, "cniVersion": "1.1.0"}
    pod = Pod(env["netns"], f"/var/run/netns/{env['netns']}", f"c{env['tag']}")
    plugin = BridgePlugin()
    shaped = result_to_json(plugin.add(_request("ADD", conf, pod)), "1.1.0")
    try:
        subprocess.run(["ip", "-n", env["netns"], "addr", "flush", "dev", "eth0"], check=True)
        with pytest.raises(CniError) as err:
            plugin.check(_request("CHECK", {**conf, "prevResult": shaped}, pod))
        assert err.value.code == Code.CHECK_FAILED and "lacks address 10.97.0.2/24" in err.value.msg
    finally:
        plugin.delete(_request("DEL", conf, pod))


def test_a_failed_add_unwinds_every_step(env: dict[str, str]) -> None:
    """An address already taken: the ADD fails after the veth exists; nothing is left."""
    (case,) = [c for c in _cases(env) if c.name == "gateway"]
    conf = {**case.conf, "cniVersion": "1.1.0", "runtimeConfig": {"ips": ["10.97.0.9/24"]}}
    taken = Path(env["data"]) / conf["name"]
    taken.mkdir(parents=True)
    (taken / "10.97.0.9").write_text("someone\r\neth0")
    pod = Pod(env["netns"], f"/var/run/netns/{env['netns']}", f"c{env['tag']}")
    with pytest.raises(CniError) as err:
        BridgePlugin().add(_request("ADD", conf, pod))
    assert err.value.code == Code.ADDRESS_UNAVAILABLE
    with NetNS(env["netns"]) as ns:
        assert ns.link_lookup(ifname="eth0") == []
    with Rtnl() as host_rt:
        assert hostveth.find(host_rt, "loxi", conf["name"], pod.container_id, "eth0") == []
    assert records.scan().records == []
    assert sorted(p.name for p in taken.iterdir() if p.name[0].isdigit()) == ["10.97.0.9"]
