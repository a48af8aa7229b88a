"""The hand-written rtnetlink layer (loxicni.net.rtnl) and the links/ipconf functions on it.

Two independent checks: the bytes of every request are compared with what pyroute2's encoders
make of the same message, and every request runs against the kernel in network namespaces made
here (and removed), with the outcome read back through pyroute2. Errors come back with their
errno (ENODEV, EEXIST, EOPNOTSUPP, ...) and the kernel's extended-ack text.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPBatch, IPRoute
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from loxicni.cni.types import Route
from loxicni.net import ipconf, links, rtnl
from loxicni.net.rtnl import NetlinkError, Rtnl

from .encoding import ACK, CREATE, DUMP, packed, pyroute2_bytes
from .own_netns import Ns, open_ns

MAC_A = "02:00:5e:00:53:01"
MAC_B = "02:00:5e:00:53:02"


# --------------------------------------------------------------------- encodings (oracle)


def _ours(request: rtnl.Request, seq: int = 7) -> bytes:
    return rtnl.encode(request, seq)


SKIP_STATS = ("IFLA_EXT_MASK", rtnl.RTEXT_FILTER_SKIP_STATS)


def _linkinfo(kind: str, *data: tuple[str, Any]) -> tuple[str, Any]:
    attrs: list[Any] = [("IFLA_INFO_KIND", kind)]
    if data:
        attrs.append(("IFLA_INFO_DATA", {"attrs": list(data)}))
    return ("IFLA_LINKINFO", {"attrs": attrs})


ENCODINGS: list[tuple[str, rtnl.Request, bytes]] = [
    (
        "link get by name",
        rtnl.link_get(name="eth0"),
        pyroute2_bytes(ifinfmsg, rtnl.RTM_GETLINK, 0, {}, [("IFLA_IFNAME", "eth0"), SKIP_STATS]),
    ),
    (
        "link get by index",
        rtnl.link_get(index=42),
        pyroute2_bytes(ifinfmsg, rtnl.RTM_GETLINK, 0, {"index": 42}, [SKIP_STATS]),
    ),
    (
        "link dump",
        rtnl.link_dump(),
        pyroute2_bytes(ifinfmsg, rtnl.RTM_GETLINK, DUMP, {}, [SKIP_STATS]),
    ),
    (
        "bridge",
        rtnl.link_add_bridge("br-x", mac=MAC_A, mtu=1400, vlan_filtering=True),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_NEWLINK,
            CREATE,
            {},
            [
                ("IFLA_IFNAME", "br-x"),
                ("IFLA_ADDRESS", MAC_A),
                ("IFLA_MTU", 1400),
                _linkinfo("bridge", ("IFLA_BR_VLAN_FILTERING", 1)),
            ],
        ),
    ),
    (
        "bridge, defaults",
        rtnl.link_add_bridge("br-x", mac=MAC_A),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_NEWLINK,
            CREATE,
            {},
            [("IFLA_IFNAME", "br-x"), ("IFLA_ADDRESS", MAC_A), _linkinfo("bridge")],
        ),
    ),
    (
        "veth, peer in a netns",
        rtnl.link_add_veth("loxi0", peer_name="eth0", peer_netns_fd=9, mtu=1450, peer_mac=MAC_B),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_NEWLINK,
            CREATE,
            {},
            [
                ("IFLA_IFNAME", "loxi0"),
                ("IFLA_MTU", 1450),
                _linkinfo(
                    "veth",
                    (
                        "VETH_INFO_PEER",
                        {
                            "attrs": [
                                ("IFLA_IFNAME", "eth0"),
                                ("IFLA_NET_NS_FD", 9),
                                ("IFLA_MTU", 1450),
                                ("IFLA_ADDRESS", MAC_B),
                            ]
                        },
                    ),
                ),
            ],
        ),
    ),
    (
        "veth, plain",
        rtnl.link_add_veth("loxi0", peer_name="eth0"),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_NEWLINK,
            CREATE,
            {},
            [
                ("IFLA_IFNAME", "loxi0"),
                _linkinfo("veth", ("VETH_INFO_PEER", {"attrs": [("IFLA_IFNAME", "eth0")]})),
            ],
        ),
    ),
    (
        "set: up, alias, master",
        rtnl.link_set(5, up=True, alias="loxi/net/c1/eth0", master=3),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_SETLINK,
            ACK,
            {"index": 5, "flags": 1, "change": 1},
            [("IFLA_IFALIAS", "loxi/net/c1/eth0"), ("IFLA_MASTER", 3)],
        ),
    ),
    (
        "set: down, promisc, mtu, group",
        rtnl.link_set(5, up=False, promisc=True, mtu=9000, group=0x4C580001),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_SETLINK,
            ACK,
            {"index": 5, "flags": 0x100, "change": 0x101},
            [("IFLA_MTU", 9000), ("IFLA_GROUP", 0x4C580001)],
        ),
    ),
    (
        "bridge vlan_filtering",
        rtnl.bridge_set_vlan_filtering(3, True),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_NEWLINK,
            ACK,
            {"index": 3},
            [_linkinfo("bridge", ("IFLA_BR_VLAN_FILTERING", 1))],
        ),
    ),
    (
        "vlan add",
        rtnl.bridge_vlan(
            "add", 5, 100, links.BRIDGE_VLAN_INFO_PVID | links.BRIDGE_VLAN_INFO_UNTAGGED
        ),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_SETLINK,
            ACK,
            {"family": rtnl.AF_BRIDGE, "index": 5},
            [("IFLA_AF_SPEC", {"attrs": [("IFLA_BRIDGE_VLAN_INFO", {"vid": 100, "flags": 6})]})],
        ),
    ),
    (
        "vlan del",
        rtnl.bridge_vlan("del", 5, 1),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_DELLINK,
            ACK,
            {"family": rtnl.AF_BRIDGE, "index": 5},
            [("IFLA_AF_SPEC", {"attrs": [("IFLA_BRIDGE_VLAN_INFO", {"vid": 1, "flags": 0})]})],
        ),
    ),
    (
        "link del",
        rtnl.link_del(5),
        pyroute2_bytes(ifinfmsg, rtnl.RTM_DELLINK, ACK, {"index": 5}, []),
    ),
    (
        "link del by group",
        rtnl.link_del_group(0x4C580002),
        pyroute2_bytes(ifinfmsg, rtnl.RTM_DELLINK, ACK, {}, [("IFLA_GROUP", 0x4C580002)]),
    ),
    (
        "address v4",
        rtnl.addr_add(5, packed("10.9.0.2"), 24),
        pyroute2_bytes(
            ifaddrmsg,
            rtnl.RTM_NEWADDR,
            CREATE,
            {"family": rtnl.AF_INET, "prefixlen": 24, "index": 5},
            [("IFA_ADDRESS", "10.9.0.2"), ("IFA_LOCAL", "10.9.0.2")],
        ),
    ),
    (
        "address v6 without DAD",
        rtnl.addr_add(5, packed("fd00:9::2"), 64, nodad=True),
        pyroute2_bytes(
            ifaddrmsg,
            rtnl.RTM_NEWADDR,
            CREATE,
            {"family": rtnl.AF_INET6, "prefixlen": 64, "flags": rtnl.IFA_F_NODAD, "index": 5},
            [("IFA_ADDRESS", "fd00:9::2"), ("IFA_FLAGS", rtnl.IFA_F_NODAD)],
        ),
    ),
    (
        "address del",
        rtnl.addr_del(5, packed("fd00:9::2"), 64),
        pyroute2_bytes(
            ifaddrmsg,
            rtnl.RTM_DELADDR,
            ACK,
            {"family": rtnl.AF_INET6, "prefixlen": 64, "index": 5},
            [("IFA_ADDRESS", "fd00:9::2")],
        ),
    ),
    (
        "address dump of one link",
        rtnl.addr_dump(5),
        pyroute2_bytes(ifaddrmsg, rtnl.RTM_GETADDR, DUMP, {"index": 5}, []),
    ),
    (
        "route, everything",
        rtnl.route_add(
            rtnl.AF_INET,
            packed("10.8.0.0"),
            16,
            oif=5,
            gateway=packed("10.9.0.1"),
            priority=7,
            table=100,
            scope=0,
            mtu=1400,
            advmss=1300,
        ),
        pyroute2_bytes(
            rtmsg,
            rtnl.RTM_NEWROUTE,
            CREATE,
            {"family": 2, "dst_len": 16, "table": 100, "proto": 4, "type": 1},
            [
                ("RTA_DST", "10.8.0.0"),
                ("RTA_OIF", 5),
                ("RTA_GATEWAY", "10.9.0.1"),
                ("RTA_PRIORITY", 7),
                ("RTA_TABLE", 100),
                ("RTA_METRICS", {"attrs": [("RTAX_MTU", 1400), ("RTAX_ADVMSS", 1300)]}),
            ],
        ),
    ),
    (
        "route, v6 default via gateway",
        rtnl.route_add(rtnl.AF_INET6, packed("::"), 0, oif=5, gateway=packed("fd00:9::1")),
        pyroute2_bytes(
            rtmsg,
            rtnl.RTM_NEWROUTE,
            CREATE,
            {"family": 10, "table": 254, "proto": 4, "type": 1},
            [("RTA_OIF", 5), ("RTA_GATEWAY", "fd00:9::1")],
        ),
    ),
    (
        "route, table >= 256 and link scope",
        rtnl.route_add(rtnl.AF_INET, packed("10.8.0.0"), 16, oif=5, table=1000, scope=253),
        pyroute2_bytes(
            rtmsg,
            rtnl.RTM_NEWROUTE,
            CREATE,
            {"family": 2, "dst_len": 16, "table": 0, "proto": 4, "scope": 253, "type": 1},
            [("RTA_DST", "10.8.0.0"), ("RTA_OIF", 5), ("RTA_TABLE", 1000)],
        ),
    ),
    (
        "route dump of one link",
        rtnl.route_dump(rtnl.AF_INET6, oif=5),
        pyroute2_bytes(
            rtmsg, rtnl.RTM_GETROUTE, DUMP, {"family": 10, "table": 254}, [("RTA_OIF", 5)]
        ),
    ),
]


@pytest.mark.parametrize(
    ("ours", "oracle"), [e[1:] for e in ENCODINGS], ids=[e[0] for e in ENCODINGS]
)
def test_encoding_matches_pyroute2(ours: rtnl.Request, oracle: bytes) -> None:
    assert _ours(ours).hex() == oracle.hex()


def test_hairpin_encoding_is_pyroute2s_with_the_nested_flag() -> None:
    """pyroute2 encodes IFLA_PROTINFO without NLA_F_NESTED, which the bridge would read as a
    bare STP port state (and pyroute2 sends it with RTM_NEWLINK, which never reaches the
    bridge's handler); ``bridge link set hairpin on`` sets the flag, and so do we."""
    oracle = bytearray(
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_SETLINK,
            ACK,
            {"family": rtnl.AF_BRIDGE, "index": 5},
            [("IFLA_PROTINFO", {"attrs": [("IFLA_BRPORT_MODE", 1)]})],
        )
    )
    type_at = 16 + 16 + 2  # netlink header, ifinfomsg, the attribute's length
    assert oracle[type_at : type_at + 2] == rtnl.IFLA_PROTINFO.to_bytes(2, "little")
    oracle[type_at + 1] |= rtnl.NLA_F_NESTED >> 8
    assert _ours(rtnl.bridge_port_hairpin(5, True)) == bytes(oracle)


def _batch(call: Any) -> bytes:
    """What pyroute2's IPRoute API sends for ``call(ipb)`` (sequence number set to 7)."""
    ipb = IPBatch()
    try:
        call(ipb)
        data = bytearray(ipb.asyncore.batch)
    finally:
        ipb.close()
    data[8:16] = (7).to_bytes(4, "little") + bytes(4)
    return bytes(data)


def test_same_bytes_as_the_pyroute2_calls_the_plugin_made() -> None:
    """The requests the plugin used to make through IPRoute, made by this layer."""
    assert _ours(rtnl.link_add_bridge("cni0", mac=MAC_A, mtu=1400)) == _batch(
        lambda i: i.link("add", ifname="cni0", kind="bridge", address=MAC_A, mtu=1400)
    )
    peer = {"ifname": "eth0", "net_ns_fd": 9, "mtu": 1400, "address": MAC_B}
    assert _ours(
        rtnl.link_add_veth("loxi0", peer_name="eth0", peer_netns_fd=9, mtu=1400, peer_mac=MAC_B)
    ) == _batch(lambda i: i.link("add", ifname="loxi0", kind="veth", mtu=1400, peer=peer))
    assert _ours(rtnl.link_del(5)) == _batch(lambda i: i.link("del", index=5))
    assert _ours(rtnl.link_del_group(77)) == _batch(lambda i: i.link("del", group=77))
    assert _ours(rtnl.bridge_vlan("add", 5, 100, 6)) == _batch(
        lambda i: i.vlan_filter("add", index=5, vlan_info={"vid": 100, "flags": 6})
    )
    assert _ours(rtnl.addr_add(5, packed("10.9.0.2"), 24)) == _batch(
        lambda i: i.addr("add", index=5, address="10.9.0.2", prefixlen=24)
    )
    assert _ours(rtnl.route_add(2, packed("10.8.0.0"), 16, oif=5, gateway=packed("10.9.0.1")))
    assert _ours(
        rtnl.route_add(2, packed("10.8.0.0"), 16, oif=5, gateway=packed("10.9.0.1"))
    ) == _batch(lambda i: i.route("add", dst="10.8.0.0/16", oif=5, gateway="10.9.0.1"))
    # Link changes: pyroute2 sends RTM_NEWLINK, we send RTM_SETLINK; the rest is the same.
    setlink = bytearray(_batch(lambda i: i.link("set", index=5, ifalias="a", master=3, state="up")))
    setlink[4:6] = rtnl.RTM_SETLINK.to_bytes(2, "little")
    assert _ours(rtnl.link_set(5, up=True, alias="a", master=3)) == bytes(setlink)


def test_attribute_parsing() -> None:
    data = rtnl.attr_str(3, "eth0") + rtnl.nest(18 | rtnl.NLA_F_NESTED, rtnl.attr_u8(1, 7))
    attrs = rtnl.parse_attrs(data)
    assert rtnl.cstr(attrs[3]) == "eth0"
    assert rtnl.parse_attrs(attrs[18]) == {1: b"\x07"}
    assert rtnl.parse_attrs(b"\x02\x00\x01\x00junk") == {}  # a length below 4 ends the walk


# ------------------------------------------------------------------- against the kernel


@pytest.fixture
def make_ns() -> Iterator[Any]:
    made: list[Ns] = []

    def make() -> Ns:
        ns = open_ns("rtnlt")
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.close()


@pytest.fixture
def ns(make_ns: Any) -> Ns:
    made: Ns = make_ns()
    return made


def _kind(msg: Any) -> str | None:
    return msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))  # type: ignore[no-any-return]


def test_socket_lives_in_the_netns_it_was_made_in(ns: Ns) -> None:
    assert [link.name for link in links.dump(ns.rt)] == ["lo"]
    with Rtnl() as host:
        assert any(link.name == "lo" for link in links.dump(host))
        assert len(links.dump(host)) >= 1


def test_get_by_name_and_index_and_enodev(ns: Ns) -> None:
    lo = links.get(ns.rt, "lo")
    assert lo is not None and lo.index == 1 and lo.name == "lo" and lo.mac == "00:00:00:00:00:00"
    assert links.get_by_index(ns.rt, 1) == lo
    assert links.get(ns.rt, "nope0") is None
    assert links.get_by_index(ns.rt, 4242) is None
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.link_get(name="nope0"))
    assert err.value.errno == errno.ENODEV
    assert isinstance(err.value, OSError) and "No such device" in str(err.value)


def test_bridge_create_eexist_and_readback(ns: Ns) -> None:
    bridge, created = links.ensure_bridge(
        ns.rt, "br-t", mtu=1400, promisc=True, vlan_filtering=False
    )
    assert created and bridge.kind == "bridge" and bridge.up and bridge.promisc
    msg = ns.link(bridge.index)
    assert msg.get("IFLA_IFNAME") == "br-t" and _kind(msg) == "bridge"
    assert msg.get("IFLA_MTU") == 1400 and msg.get("IFLA_ADDRESS") == bridge.mac
    assert msg.get("IFLA_PROMISCUITY") == 1 and msg["flags"] & links.IFF_UP
    assert int(bridge.mac.split(":")[0], 16) & 0x03 == 0x02  # locally administered unicast
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.link_add_bridge("br-t", mac=MAC_A))
    assert err.value.errno == errno.EEXIST
    again, created = links.ensure_bridge(ns.rt, "br-t", mtu=0, promisc=True, vlan_filtering=False)
    assert not created and again == bridge


def test_bridge_name_taken_by_another_kind(ns: Ns) -> None:
    ns.pyr.link("add", ifname="notabr", kind="veth", peer={"ifname": "notabr-p"})
    with pytest.raises(NetlinkError) as err:
        links.ensure_bridge(ns.rt, "notabr", mtu=0, promisc=False, vlan_filtering=False)
    assert err.value.errno == errno.EEXIST and "not a bridge" in str(err.value)


def _kernel_has_vlan_filtering(ns: Ns) -> bool:
    try:
        ns.pyr.link("add", ifname="vf-probe", kind="bridge", br_vlan_filtering=1)
    except Exception as exc:
        assert getattr(exc, "code", None) == errno.EOPNOTSUPP, exc
        return False
    ns.pyr.link("del", ifname="vf-probe")
    return True


def test_vlan_filtering_and_port_vlans(ns: Ns) -> None:
    """On this kernel (no bridge VLAN filtering) every VLAN request is refused with EOPNOTSUPP:
    at creation (atomically: no bridge left), on an existing bridge (only RTM_NEWLINK reaches
    the bridge's changelink; RTM_SETLINK would ignore IFLA_LINKINFO and "succeed"), and port
    VLANs. Where the kernel has it, the same requests must take effect."""
    supported = _kernel_has_vlan_filtering(ns)
    ns.pyr.link("add", ifname="vp0", kind="veth", peer={"ifname": "vp1"})
    port = ns.index("vp0")
    if not supported:
        with pytest.raises(NetlinkError) as err:
            ns.rt.call(rtnl.link_add_bridge("br-v", mac=MAC_A, vlan_filtering=True))
        assert err.value.errno == errno.EOPNOTSUPP
        assert links.get(ns.rt, "br-v") is None
        bridge, _ = links.ensure_bridge(ns.rt, "br-v", mtu=0, promisc=False, vlan_filtering=False)
        with pytest.raises(NetlinkError) as err:
            ns.rt.call(rtnl.bridge_set_vlan_filtering(bridge.index, True))
        assert err.value.errno == errno.EOPNOTSUPP
        links.attach_port(ns.rt, port, bridge.index, alias="p", hairpin=False)
        with pytest.raises(NetlinkError) as err:
            ns.rt.call(rtnl.bridge_vlan("add", port, 100, 6))
        assert err.value.errno == errno.EOPNOTSUPP
        # Deleting is accepted and does nothing here, as for `bridge vlan del` (the kernel
        # reaches the bridge's handler either way: a wrong port is refused).
        ns.rt.call(rtnl.bridge_vlan("del", port, 1))
        with pytest.raises(NetlinkError) as err:
            ns.rt.call(rtnl.bridge_vlan("del", 4242, 1))
        assert err.value.errno == errno.ENODEV
        return
    bridge, _ = links.ensure_bridge(ns.rt, "br-v", mtu=0, promisc=False, vlan_filtering=True)
    info = ns.link(bridge.index).get(("IFLA_LINKINFO", "IFLA_INFO_DATA"))
    assert info.get("IFLA_BR_VLAN_FILTERING") == 1
    links.attach_port(ns.rt, port, bridge.index, alias="p", hairpin=False)
    links.apply_vlan_ops(ns.rt, port, links.port_vlan_ops(100, ((200, 201),), False))
    shown = subprocess.run(
        ["ip", "netns", "exec", ns.name, "bridge", "vlan", "show", "dev", "vp0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "100 PVID Egress Untagged" in shown and "200" in shown and "201" in shown


def test_veth_with_peer_in_another_netns(make_ns: Any) -> None:
    host, pod = make_ns(), make_ns()
    veth = links.create_veth(
        host.rt,
        host_name="loxi-t0",
        peer_name="eth0",
        peer_netns_fd=pod.fd,
        mtu=1420,
        peer_mac=MAC_B,
    )
    assert veth.kind == "veth" and veth.mtu == 1420 and veth.name == "loxi-t0"
    peer = pod.link(pod.index("eth0"))
    assert peer.get("IFLA_MTU") == 1420 and peer.get("IFLA_ADDRESS") == MAC_B
    assert _kind(peer) == "veth"
    assert veth.peer == peer["index"]  # IFLA_LINK: the peer's index in its netns
    assert host.pyr.link_lookup(ifname="eth0") == []
    with pytest.raises(NetlinkError) as err:
        links.create_veth(
            host.rt,
            host_name="loxi-t0",
            peer_name="eth1",
            peer_netns_fd=pod.fd,
            mtu=0,
            peer_mac=None,
        )
    assert err.value.errno == errno.EEXIST
    # the pod side, through a socket opened inside the pod's netns
    pod_link = links.get(pod.rt, "eth0")
    assert pod_link is not None and pod_link.mac == MAC_B and not pod_link.up
    links.set_up(pod.rt, pod_link.index)
    assert pod.link(pod_link.index)["flags"] & links.IFF_UP


def test_set_master_alias_up_mtu_group_promisc_hairpin(ns: Ns) -> None:
    bridge, _ = links.ensure_bridge(ns.rt, "br-s", mtu=0, promisc=False, vlan_filtering=False)
    ns.pyr.link("add", ifname="sp0", kind="veth", peer={"ifname": "sp1"})
    port = ns.index("sp0")
    links.attach_port(ns.rt, port, bridge.index, alias="loxi/n/c/eth0", hairpin=True)
    msg = ns.link(port)
    assert msg.get("IFLA_MASTER") == bridge.index
    assert msg.get("IFLA_IFALIAS") == "loxi/n/c/eth0"
    assert msg["flags"] & links.IFF_UP
    slave = msg.get(("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA"))
    assert slave.get("IFLA_BRPORT_MODE") == 1  # hairpin
    ns.rt.call(rtnl.bridge_port_hairpin(port, False))
    assert ns.link(port).get(("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA")).get("IFLA_BRPORT_MODE") == 0
    ns.rt.call(rtnl.link_set(port, up=False, promisc=True, mtu=1300, group=77))
    msg = ns.link(port)
    assert not msg["flags"] & links.IFF_UP and msg["flags"] & links.IFF_PROMISC
    assert msg.get("IFLA_MTU") == 1300 and msg.get("IFLA_GROUP") == 77
    link = links.get_by_index(ns.rt, port)
    assert link is not None and link.master == bridge.index and link.alias == "loxi/n/c/eth0"
    assert link.promisc and not link.up and link.mtu == 1300 and link.peer == ns.index("sp1")
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.link_set(4242, up=True))
    assert err.value.errno == errno.ENODEV


def test_delete_by_index_and_by_group(ns: Ns) -> None:
    for i in range(3):
        ns.pyr.link("add", ifname=f"dg{i}", kind="veth", peer={"ifname": f"dg{i}p"})
    indexes = [ns.index(f"dg{i}") for i in range(3)]
    assert links.delete(ns.rt, indexes[0])
    assert not links.delete(ns.rt, indexes[0])  # already gone
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.link_del(indexes[0]))
    assert err.value.errno == errno.ENODEV
    for index in indexes[1:]:
        assert links.set_group(ns.rt, index, 0x4C58FFFF)
    assert not links.set_group(ns.rt, indexes[0], 0x4C58FFFF)
    assert links.delete_group(ns.rt, 0x4C58FFFF)
    assert [m.get("IFLA_IFNAME") for m in ns.pyr.get_links()] == ["lo"]
    assert not links.delete_group(ns.rt, 0x4C58FFFF)  # ENODEV: nothing in the group
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.link_del_group(0x4C58FFFF))
    assert err.value.errno == errno.ENODEV


def test_addresses(ns: Ns) -> None:
    ns.pyr.link("add", ifname="ad0", kind="veth", peer={"ifname": "ad1"})
    a, b = ns.index("ad0"), ns.index("ad1")
    v4 = ipaddress.ip_interface("10.77.0.2/24")
    v6 = ipaddress.ip_interface("fd00:77::2/64")
    assert ipconf.add_address(ns.rt, a, v4, dad=False)
    assert ipconf.add_address(ns.rt, a, v6, dad=False)
    assert ipconf.add_address(ns.rt, b, ipaddress.ip_interface("10.77.0.3/24"), dad=False)
    assert not ipconf.add_address(ns.rt, a, v4, dad=False)  # EEXIST: already there
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.addr_add(a, v4.ip.packed, 24))
    assert err.value.errno == errno.EEXIST
    seen = {
        (m.get("IFA_ADDRESS"), m["prefixlen"], m.get("IFA_FLAGS"))
        for m in ns.pyr.get_addr(index=a)
        if not m.get("IFA_ADDRESS", "").startswith("fe80")
    }
    v6_flags = next(f for addr, _, f in seen if addr == "fd00:77::2")
    assert v6_flags & rtnl.IFA_F_NODAD
    assert {(addr, plen) for addr, plen, _ in seen} == {("10.77.0.2", 24), ("fd00:77::2", 64)}
    # the kernel filters the dump by link: b's address is not in a's
    assert sorted(map(str, ipconf.addresses(ns.rt, a))) == ["10.77.0.2/24", "fd00:77::2/64"]
    assert [str(i) for i in ipconf.addresses(ns.rt, b)] == ["10.77.0.3/24"]
    ipconf.delete_address(ns.rt, a, v4)
    ipconf.delete_address(ns.rt, a, v4)  # gone already: fine
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.addr_del(a, v4.ip.packed, 24))
    assert err.value.errno == errno.EADDRNOTAVAIL
    assert [str(i) for i in ipconf.addresses(ns.rt, a)] == ["fd00:77::2/64"]
    # DAD asked for: no NODAD flag
    assert ipconf.add_address(ns.rt, b, ipaddress.ip_interface("fd00:77::3/64"), dad=True)
    flags = next(m.get("IFA_FLAGS") for m in ns.pyr.get_addr(index=b, address="fd00:77::3"))
    assert not flags & rtnl.IFA_F_NODAD


def test_routes(ns: Ns) -> None:
    ns.pyr.link("add", ifname="rt0", kind="veth", peer={"ifname": "rt1"})
    a, b = ns.index("rt0"), ns.index("rt1")
    for index in (a, b):
        links.set_up(ns.rt, index)
    ipconf.add_address(ns.rt, a, ipaddress.ip_interface("10.66.0.2/24"), dad=False)
    ipconf.add_address(ns.rt, a, ipaddress.ip_interface("fd00:66::2/64"), dad=False)
    ipconf.add_address(ns.rt, b, ipaddress.ip_interface("10.67.0.2/24"), dad=False)
    gw4, gw6 = ipaddress.ip_address("10.66.0.1"), ipaddress.ip_address("fd00:66::1")
    routes = [
        Route(dst=ipaddress.ip_network("0.0.0.0/0"), gw=gw4),
        Route(dst=ipaddress.ip_network("10.50.0.0/16"), gw=gw4, priority=30, mtu=1400, advmss=1360),
        Route(dst=ipaddress.ip_network("10.51.0.0/16"), scope=253),
        Route(dst=ipaddress.ip_network("::/0"), gw=gw6),
        Route(dst=ipaddress.ip_network("fd00:55::/48"), gw=gw6, priority=5),
    ]
    for route in routes:
        ipconf.add_route(ns.rt, a, route)
        ipconf.add_route(ns.rt, a, route)  # EEXIST: already there, fine
    ipconf.add_route(ns.rt, b, Route(dst=ipaddress.ip_network("10.52.0.0/16")))
    ipconf.add_route(ns.rt, a, Route(dst=ipaddress.ip_network("10.53.0.0/16"), table=1000))
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.route_add(2, packed("10.51.0.0"), 16, oif=a, scope=253))
    assert err.value.errno == errno.EEXIST

    def dumped(family: int, dst: str, table: int = 254) -> Any:
        (m,) = [r for r in ns.pyr.get_routes(family=family, table=table) if r.get("RTA_DST") == dst]
        return m

    m = dumped(2, "10.50.0.0")
    assert m.get("RTA_GATEWAY") == "10.66.0.1" and m.get("RTA_PRIORITY") == 30
    assert m.get("RTA_OIF") == a and m["proto"] == rtnl.RTPROT_STATIC
    metrics = m.get("RTA_METRICS")
    assert metrics.get("RTAX_MTU") == 1400 and metrics.get("RTAX_ADVMSS") == 1360
    assert dumped(2, "10.51.0.0")["scope"] == 253
    assert dumped(2, "10.53.0.0", table=1000).get("RTA_TABLE") == 1000
    m = dumped(10, "fd00:55::")
    assert m.get("RTA_GATEWAY") == "fd00:66::1" and m.get("RTA_PRIORITY") == 5

    def pyroute2_view(index: int) -> set[tuple[str, str | None]]:
        out = set()
        for family, default in ((2, "0.0.0.0/0"), (10, "::/0")):
            for m in ns.pyr.get_routes(family=family, oif=index, table=254):
                dst = m.get("RTA_DST")
                out.add((f"{dst}/{m['dst_len']}" if dst else default, m.get("RTA_GATEWAY")))
        return out

    ours = {(str(d), str(g) if g else None) for d, g in ipconf.routes(ns.rt, a)}
    assert ours == pyroute2_view(a)
    assert {
        ("0.0.0.0/0", "10.66.0.1"),
        ("10.50.0.0/16", "10.66.0.1"),
        ("10.51.0.0/16", None),
        ("::/0", "fd00:66::1"),
        ("fd00:55::/48", "fd00:66::1"),
    } <= ours
    assert not any(d.startswith(("10.52.", "10.53.", "10.67.")) for d, _ in ours)
    assert {(str(d), g) for d, g in ipconf.routes(ns.rt, b)} == pyroute2_view(b)
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.route_dump(rtnl.AF_INET, oif=4242))
    assert err.value.errno == errno.ENODEV


def test_extended_ack_message(ns: Ns) -> None:
    """A request the kernel's strict checking refuses comes back with its explanation."""
    header = struct.pack("=BBBBBBBBI", rtnl.AF_INET, 8, 0, 0, 0, 0, 0, 0, 0)  # dst_len 8
    request = (rtnl.RTM_GETROUTE, rtnl.NLM_F_DUMP, header)
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(request)
    assert err.value.errno == errno.EINVAL
    assert "header" in err.value.msg and err.value.msg in str(err.value)


def test_dump_of_many_links(ns: Ns) -> None:
    """Hundreds of links: the dump spans many datagrams; ours and pyroute2's agree."""
    script = "".join(f"link add mv{i} type veth peer name mv{i}p\n" for i in range(300))
    subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input=script.encode(), check=True)
    ours = {(link.index, link.name, link.mac, link.peer) for link in links.dump(ns.rt)}
    theirs = {
        (m["index"], m.get("IFLA_IFNAME"), m.get("IFLA_ADDRESS"), m.get("IFLA_LINK"))
        for m in ns.pyr.get_links()
    }
    assert len(ours) == 601 and ours == theirs
    # and with links coming and going meanwhile, the stable ones are all there every time
    stop = threading.Event()

    def churn() -> None:
        with IPRoute(netns=ns.name) as ipr:
            while not stop.is_set():
                ipr.link("add", ifname="churn0", kind="bridge")
                ipr.link("del", ifname="churn0")

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(20):
            names = {link.name for link in links.dump(ns.rt)}
            assert {f"mv{i}" for i in range(300)} <= names
    finally:
        stop.set()
        thread.join()


def test_sequence_numbers_wrap(ns: Ns) -> None:
    ns.rt._seq = 0xFFFFFFFE
    for _ in range(4):
        assert links.get(ns.rt, "lo") is not None
    assert 1 <= ns.rt._seq <= 3
