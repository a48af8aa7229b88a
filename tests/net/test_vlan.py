"""VLAN: the requests built for a pod port, and what this kernel does with them.

This machine's kernel has no bridge VLAN filtering; the kernel tests assert the real VLAN state
where it exists and the clear refusal where it does not, so they run (and can fail) on both.
"""

from __future__ import annotations

import errno
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from loxicni.net import links, rtnl
from loxicni.net.links import BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED, VlanOp
from loxicni.net.rtnl import Rtnl


def test_access_port_is_pvid_untagged() -> None:
    ops = links.port_vlan_ops(100, (), preserve_default_vlan=True)
    assert ops == [VlanOp("add", 100, flags=BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED)]


def test_default_vlan_removed_unless_preserved() -> None:
    ops = links.port_vlan_ops(100, (), preserve_default_vlan=False)
    assert ops[0] == VlanOp("del", 1)
    assert links.port_vlan_ops(0, (), preserve_default_vlan=False) == []


class _Recorder:
    """Stands in for the netlink socket of a kernel without VLAN filtering: keeps what
    ``apply_vlan_ops`` sends (the kernel test below checks the same requests for real)."""

    def __init__(self) -> None:
        self.sent: list[rtnl.Request] = []

    def call(self, request: rtnl.Request) -> list[bytes]:
        self.sent.append(request)
        return []


def _sent(index: int, ops: list[VlanOp]) -> list[rtnl.Request]:
    recorder = _Recorder()
    links.apply_vlan_ops(recorder, index, ops)  # type: ignore[arg-type]
    return recorder.sent


def test_trunk_port_is_tagged() -> None:
    ops = links.port_vlan_ops(0, ((10, 10), (20, 22)), preserve_default_vlan=True)
    assert ops == [VlanOp("add", 10), VlanOp("add", 20, vid_end=22)]
    assert _sent(7, ops) == [rtnl.bridge_vlan("add", 7, vid, 0) for vid in (10, 20, 21, 22)]


def test_access_request_carries_vid_and_flags() -> None:
    assert _sent(3, [VlanOp("add", 100, flags=6)]) == [rtnl.bridge_vlan("add", 3, 100, 6)]


def _kernel_has_vlan_filtering(ipr: IPRoute, name: str) -> bool:
    try:
        ipr.link("add", ifname=name, kind="bridge", br_vlan_filtering=1)
    except NetlinkError as exc:
        assert exc.code == errno.EOPNOTSUPP, exc
        return False
    ipr.link("del", ifname=name)
    return True


@pytest.fixture
def port() -> Iterator[tuple[Rtnl, IPRoute, str]]:
    """Our handle, pyroute2's (the oracle) and a free bridge name."""
    tag = uuid.uuid4().hex[:6]
    bridge, veth = f"vtbr{tag}", f"vtp{tag}"
    ours, ipr = Rtnl(), IPRoute()
    try:
        yield ours, ipr, bridge
    finally:
        for name in (veth, bridge):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        ipr.close()
        ours.close()


def test_vlan_on_the_kernel(port: tuple[Rtnl, IPRoute, str]) -> None:
    ours, ipr, bridge = port
    supported = _kernel_has_vlan_filtering(ipr, bridge)
    if not supported:
        # This kernel: the bridge is refused atomically (nothing created), so the plugin can
        # report code 100 and leave nothing behind.
        with pytest.raises(OSError) as err:
            links.ensure_bridge(ours, bridge, mtu=0, promisc=False, vlan_filtering=True)
        assert err.value.errno == errno.EOPNOTSUPP
        assert links.get(ours, bridge) is None
        return
    br, _ = links.ensure_bridge(ours, bridge, mtu=0, promisc=False, vlan_filtering=True)
    veth = bridge.replace("vtbr", "vtp")
    ipr.link("add", ifname=veth, kind="veth", peer={"ifname": veth + "x"})
    port_link = links.get(ours, veth)
    assert port_link is not None
    links.attach_port(ours, port_link.index, br.index, alias="t", hairpin=False)
    links.apply_vlan_ops(ours, port_link.index, links.port_vlan_ops(100, (), False))
    shown = subprocess.run(
        ["bridge", "vlan", "show", "dev", veth], capture_output=True, text=True, check=True
    ).stdout
    assert "100 PVID Egress Untagged" in shown and " 1 " not in shown
