"""The overlay's rtnetlink requests: vxlan links, neighbours, FDB entries, marked routes, and
pipelined batches.

As for the rest of loxicni.net.rtnl: the bytes of every request are compared with pyroute2's
encoding of the same message, and every request runs against the kernel in network
namespaces made here (and removed), with the outcome read back through pyroute2.
"""

from __future__ import annotations

import errno
import ipaddress
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from loxicni.net import rtnl, underlay, vxlan
from loxicni.net.errors import OverlayError
from loxicni.net.rtnl import NetlinkError, Rtnl

from .encoding import ACK, CREATE, DUMP, packed, pyroute2_bytes
from .own_netns import Ns, open_ns

MAC_A = "02:00:5e:00:53:01"
MAC_B = "02:00:5e:00:53:02"
PROTO = 76
SET = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE | rtnl.NLM_F_ACK


def _vxlan_info(*data: tuple[str, Any]) -> tuple[str, Any]:
    return (
        "IFLA_LINKINFO",
        {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": list(data)})]},
    )


def _route(flags: int, fields: dict[str, int], attrs: list[Any], msg_type: int = 24) -> bytes:
    return pyroute2_bytes(rtmsg, msg_type, flags, fields, attrs)


ENCODINGS: list[tuple[str, rtnl.Request, bytes]] = [
    (
        "vxlan over IPv4, up",
        rtnl.link_add_vxlan(
            "loxi-vxlan4",
            vni=1,
            port=8472,
            local=packed("192.0.2.1"),
            underlay=3,
            mac=MAC_A,
            mtu=1450,
        ),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_NEWLINK,
            CREATE,
            {"flags": rtnl.IFF_UP, "change": rtnl.IFF_UP},
            [
                ("IFLA_IFNAME", "loxi-vxlan4"),
                ("IFLA_ADDRESS", MAC_A),
                ("IFLA_MTU", 1450),
                _vxlan_info(
                    ("IFLA_VXLAN_ID", 1),
                    ("IFLA_VXLAN_LINK", 3),
                    ("IFLA_VXLAN_LOCAL", "192.0.2.1"),
                    ("IFLA_VXLAN_LEARNING", 0),
                    ("IFLA_VXLAN_PORT", 8472),
                ),
            ],
        ),
    ),
    (
        "vxlan over IPv6, down",
        rtnl.link_add_vxlan(
            "vx6",
            vni=0xABCDEF,
            port=4789,
            local=packed("2001:db8::1"),
            underlay=9,
            mac=MAC_B,
            mtu=1430,
            up=False,
        ),
        pyroute2_bytes(
            ifinfmsg,
            rtnl.RTM_NEWLINK,
            CREATE,
            {},
            [
                ("IFLA_IFNAME", "vx6"),
                ("IFLA_ADDRESS", MAC_B),
                ("IFLA_MTU", 1430),
                _vxlan_info(
                    ("IFLA_VXLAN_ID", 0xABCDEF),
                    ("IFLA_VXLAN_LINK", 9),
                    ("IFLA_VXLAN_LOCAL6", "2001:db8::1"),
                    ("IFLA_VXLAN_LEARNING", 0),
                    ("IFLA_VXLAN_PORT", 4789),
                ),
            ],
        ),
    ),
    (
        "link MAC",
        rtnl.link_set_address(5, MAC_B),
        pyroute2_bytes(ifinfmsg, rtnl.RTM_SETLINK, ACK, {"index": 5}, [("IFLA_ADDRESS", MAC_B)]),
    ),
    (
        "neighbour set, IPv4",
        rtnl.neigh_set(rtnl.AF_INET, 5, packed("10.244.2.0"), MAC_A),
        pyroute2_bytes(
            ndmsg,
            rtnl.RTM_NEWNEIGH,
            SET,
            {"family": rtnl.AF_INET, "ifindex": 5, "state": rtnl.NUD_PERMANENT},
            [("NDA_DST", "10.244.2.0"), ("NDA_LLADDR", MAC_A)],
        ),
    ),
    (
        "neighbour set, IPv6",
        rtnl.neigh_set(rtnl.AF_INET6, 6, packed("fd00:244:2::"), MAC_B),
        pyroute2_bytes(
            ndmsg,
            rtnl.RTM_NEWNEIGH,
            SET,
            {"family": rtnl.AF_INET6, "ifindex": 6, "state": rtnl.NUD_PERMANENT},
            [("NDA_DST", "fd00:244:2::"), ("NDA_LLADDR", MAC_B)],
        ),
    ),
    (
        "neighbour del",
        rtnl.neigh_del(rtnl.AF_INET, 5, packed("10.244.2.0")),
        pyroute2_bytes(
            ndmsg,
            rtnl.RTM_DELNEIGH,
            ACK,
            {"family": rtnl.AF_INET, "ifindex": 5},
            [("NDA_DST", "10.244.2.0")],
        ),
    ),
    (
        "neighbour dump of one link",
        rtnl.neigh_dump(rtnl.AF_INET6, 5),
        pyroute2_bytes(
            ndmsg, rtnl.RTM_GETNEIGH, DUMP, {"family": rtnl.AF_INET6}, [("NDA_IFINDEX", 5)]
        ),
    ),
    (
        "fdb set",
        rtnl.fdb_set(5, MAC_A, packed("192.0.2.2")),
        pyroute2_bytes(
            ndmsg,
            rtnl.RTM_NEWNEIGH,
            SET,
            {
                "family": rtnl.AF_BRIDGE,
                "ifindex": 5,
                "state": rtnl.NUD_PERMANENT,
                "flags": rtnl.NTF_SELF,
            },
            [("NDA_LLADDR", MAC_A), ("NDA_DST", "192.0.2.2")],
        ),
    ),
    (
        "fdb set, IPv6 remote",
        rtnl.fdb_set(6, MAC_B, packed("2001:db8::2")),
        pyroute2_bytes(
            ndmsg,
            rtnl.RTM_NEWNEIGH,
            SET,
            {
                "family": rtnl.AF_BRIDGE,
                "ifindex": 6,
                "state": rtnl.NUD_PERMANENT,
                "flags": rtnl.NTF_SELF,
            },
            [("NDA_LLADDR", MAC_B), ("NDA_DST", "2001:db8::2")],
        ),
    ),
    (
        "fdb del",
        rtnl.fdb_del(5, MAC_A),
        pyroute2_bytes(
            ndmsg,
            rtnl.RTM_DELNEIGH,
            ACK,
            {"family": rtnl.AF_BRIDGE, "ifindex": 5, "flags": rtnl.NTF_SELF},
            [("NDA_LLADDR", MAC_A)],
        ),
    ),
    (
        "fdb dump of one link",
        rtnl.fdb_dump(5),
        pyroute2_bytes(
            ndmsg, rtnl.RTM_GETNEIGH, DUMP, {"family": rtnl.AF_BRIDGE, "ifindex": 5}, []
        ),
    ),
    (
        "route add, direct",
        rtnl.route_set(
            rtnl.AF_INET,
            packed("10.244.2.0"),
            24,
            gateway=packed("192.0.2.2"),
            oif=3,
            protocol=PROTO,
        ),
        _route(
            CREATE,
            {"family": 2, "dst_len": 24, "table": 254, "proto": PROTO, "type": 1},
            [
                ("RTA_DST", "10.244.2.0"),
                ("RTA_TABLE", 254),
                ("RTA_OIF", 3),
                ("RTA_GATEWAY", "192.0.2.2"),
            ],
        ),
    ),
    (
        "route replace, onlink, IPv6, table >= 256",
        rtnl.route_set(
            rtnl.AF_INET6,
            packed("fd00:244:2::"),
            64,
            gateway=packed("fd00:244:2::"),
            oif=6,
            protocol=PROTO,
            onlink=True,
            replace=True,
            table=1000,
        ),
        _route(
            SET,
            {
                "family": 10,
                "dst_len": 64,
                "table": 0,
                "proto": PROTO,
                "type": 1,
                "flags": rtnl.RTNH_F_ONLINK,
            },
            [
                ("RTA_DST", "fd00:244:2::"),
                ("RTA_TABLE", 1000),
                ("RTA_OIF", 6),
                ("RTA_GATEWAY", "fd00:244:2::"),
            ],
        ),
    ),
    (
        "route del of our protocol",
        rtnl.route_del(rtnl.AF_INET, packed("10.244.2.0"), 24, protocol=PROTO),
        _route(
            ACK,
            {"family": 2, "dst_len": 24, "table": 254, "proto": PROTO, "scope": 255},
            [("RTA_DST", "10.244.2.0"), ("RTA_TABLE", 254)],
            msg_type=rtnl.RTM_DELROUTE,
        ),
    ),
    (
        "route del with a metric",
        rtnl.route_del(rtnl.AF_INET6, packed("fd00::"), 48, protocol=PROTO, priority=1024),
        _route(
            ACK,
            {"family": 10, "dst_len": 48, "table": 254, "proto": PROTO, "scope": 255},
            [("RTA_DST", "fd00::"), ("RTA_TABLE", 254), ("RTA_PRIORITY", 1024)],
            msg_type=rtnl.RTM_DELROUTE,
        ),
    ),
    (
        "route dump by protocol",
        rtnl.route_dump_protocol(rtnl.AF_INET, PROTO),
        _route(
            DUMP,
            {"family": 2, "table": 254, "proto": PROTO},
            [("RTA_TABLE", 254)],
            msg_type=rtnl.RTM_GETROUTE,
        ),
    ),
    (
        "route get",
        rtnl.route_get(packed("2001:db8::9")),
        _route(0, {"family": 10, "dst_len": 128}, [("RTA_DST", "2001:db8::9")], msg_type=26),
    ),
]


@pytest.mark.parametrize(
    ("ours", "oracle"), [e[1:] for e in ENCODINGS], ids=[e[0] for e in ENCODINGS]
)
def test_encoding_matches_pyroute2(ours: rtnl.Request, oracle: bytes) -> None:
    assert rtnl.encode(ours, 7).hex() == oracle.hex()


def test_batch_refuses_dumps_and_unacked_requests() -> None:
    with Rtnl() as rt:
        with pytest.raises(ValueError):
            rt.batch([rtnl.link_dump()])
        with pytest.raises(ValueError):
            rt.batch([rtnl.link_get(name="lo")])
        assert rt.batch([]) == []


# ------------------------------------------------------------------- against the kernel


@pytest.fixture
def ns() -> Iterator[Ns]:
    """A netns with a veth pair ``u0``/``u1`` up, 192.0.2.1/24 and 2001:db8::1/64 on u0."""
    made = open_ns("ovlr")
    try:
        script = (
            "link set lo up\n"
            "link add u0 mtu 1500 type veth peer name u1\n"
            "link set u0 up\nlink set u1 up\n"
            "addr add 192.0.2.1/24 dev u0\n"
            "addr add 2001:db8::1/64 dev u0 nodad\n"
        )
        subprocess.run(["ip", "-n", made.name, "-batch", "-"], input=script.encode(), check=True)
        yield made
    finally:
        made.close()


def _vxlan_data(ns: Ns, index: int) -> Any:
    msg = ns.pyr.link("get", index=index)[0]
    assert msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "vxlan"
    return msg, msg.get(("IFLA_LINKINFO", "IFLA_INFO_DATA"))


def test_vxlan_link_create_and_inspect(ns: Ns) -> None:
    u0 = ns.index("u0")
    ns.rt.call(
        rtnl.link_add_vxlan(
            "vxt4", vni=42, port=8472, local=packed("192.0.2.1"), underlay=u0, mac=MAC_A, mtu=1450
        )
    )
    ns.rt.call(
        rtnl.link_add_vxlan(
            "vxt6",
            vni=42,
            port=8472,
            local=packed("2001:db8::1"),
            underlay=u0,
            mac=MAC_B,
            mtu=1430,
            up=False,
        )
    )
    msg, data = _vxlan_data(ns, ns.index("vxt4"))
    assert msg.get("IFLA_ADDRESS") == MAC_A and msg.get("IFLA_MTU") == 1450
    assert msg["flags"] & rtnl.IFF_UP
    assert data.get("IFLA_VXLAN_ID") == 42 and data.get("IFLA_VXLAN_PORT") == 8472
    assert data.get("IFLA_VXLAN_LOCAL") == "192.0.2.1" and data.get("IFLA_VXLAN_LINK") == u0
    assert data.get("IFLA_VXLAN_LEARNING") == 0
    msg, data = _vxlan_data(ns, ns.index("vxt6"))
    assert data.get("IFLA_VXLAN_LOCAL6") == "2001:db8::1" and not msg["flags"] & rtnl.IFF_UP
    # our reading of the same links
    four, six = vxlan.get(ns.rt, "vxt4"), vxlan.get(ns.rt, "vxt6")
    assert four is not None and six is not None
    assert (four.kind, four.vni, four.port, four.underlay, four.learning) == (
        "vxlan",
        42,
        8472,
        u0,
        False,
    )
    assert str(four.local) == "192.0.2.1" and four.mac == MAC_A and four.up and four.mtu == 1450
    assert str(six.local) == "2001:db8::1" and not six.up
    u = vxlan.get(ns.rt, "u0")
    assert u is not None and u.kind == "veth" and u.vni == 0 and u.local is None
    assert vxlan.get(ns.rt, "nope0") is None
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(
            rtnl.link_add_vxlan(
                "vxt4", vni=1, port=1, local=packed("192.0.2.1"), underlay=u0, mac=MAC_A, mtu=1400
            )
        )
    assert err.value.errno == errno.EEXIST
    ns.rt.call(rtnl.link_set_address(four.index, MAC_B))  # while up: vxlan allows it
    assert ns.pyr.link("get", index=four.index)[0].get("IFLA_ADDRESS") == MAC_B


def _vx(ns: Ns, name: str = "vxt", local: str = "192.0.2.1") -> int:
    ns.rt.call(
        rtnl.link_add_vxlan(
            name,
            vni=1,
            port=8472,
            local=packed(local),
            underlay=ns.index("u0"),
            mac=MAC_A,
            mtu=1430,
        )
    )
    return ns.index(name)


def _neighbours(ns: Ns, index: int, family: int) -> dict[str, tuple[str, int]]:
    return {
        m.get("NDA_DST"): (m.get("NDA_LLADDR"), m["state"])
        for m in ns.pyr.get_neighbours(family=family, ifindex=index)
    }


def test_neighbours(ns: Ns) -> None:
    from loxicni.net import neighbours

    dev = _vx(ns)
    ns.rt.call(rtnl.neigh_set(rtnl.AF_INET, dev, packed("10.244.2.0"), MAC_A))
    ns.rt.call(rtnl.neigh_set(rtnl.AF_INET, dev, packed("10.244.3.0"), MAC_A))
    ns.rt.call(rtnl.neigh_set(rtnl.AF_INET, dev, packed("10.244.3.0"), MAC_B))  # replaced
    ns.rt.call(rtnl.neigh_set(rtnl.AF_INET6, dev, packed("fd00:244:2::"), MAC_B))
    # another link's entry and a non-permanent one: never reported as ours
    ns.ip("neigh", "add", "192.0.2.9", "lladdr", MAC_A, "dev", "u0", "nud", "permanent")
    ns.ip("neigh", "add", "10.244.9.0", "lladdr", MAC_A, "dev", "vxt", "nud", "stale")
    seen = _neighbours(ns, dev, rtnl.AF_INET)
    assert seen["10.244.2.0"] == (MAC_A, rtnl.NUD_PERMANENT)
    assert seen["10.244.3.0"] == (MAC_B, rtnl.NUD_PERMANENT)
    assert _neighbours(ns, dev, rtnl.AF_INET6)["fd00:244:2::"] == (MAC_B, rtnl.NUD_PERMANENT)
    mine = neighbours.permanent(ns.rt, dev, 4)
    assert {str(ip): mac for ip, mac in mine.items()} == {"10.244.2.0": MAC_A, "10.244.3.0": MAC_B}
    assert {str(ip) for ip in neighbours.permanent(ns.rt, dev, 6)} == {"fd00:244:2::"}
    ns.rt.call(rtnl.neigh_del(rtnl.AF_INET, dev, packed("10.244.2.0")))
    assert "10.244.2.0" not in _neighbours(ns, dev, rtnl.AF_INET)
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.neigh_del(rtnl.AF_INET, dev, packed("10.244.2.0")))
    assert err.value.errno == errno.ENOENT


def _fdb(ns: Ns, dev: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in ns.pyr.fdb("dump", ifindex=dev):
        if m["ifindex"] == dev:
            out.setdefault(m.get("NDA_LLADDR"), []).append(m.get("NDA_DST"))
    return out


def test_fdb(ns: Ns) -> None:
    from loxicni.net import neighbours

    dev = _vx(ns)
    dev6 = _vx(ns, "vxt6", "2001:db8::1")
    ns.rt.call(rtnl.fdb_set(dev, MAC_A, packed("192.0.2.2")))
    ns.rt.call(rtnl.fdb_set(dev, MAC_B, packed("192.0.2.3")))
    ns.rt.call(rtnl.fdb_set(dev, MAC_B, packed("192.0.2.4")))  # replaced
    ns.rt.call(rtnl.fdb_set(dev6, MAC_A, packed("2001:db8::2")))
    assert _fdb(ns, dev) == {MAC_A: ["192.0.2.2"], MAC_B: ["192.0.2.4"]}
    assert _fdb(ns, dev6) == {MAC_A: ["2001:db8::2"]}
    fdb_text = subprocess.run(
        ["bridge", "-n", ns.name, "fdb", "show", "dev", "vxt"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{MAC_A} dst 192.0.2.2 self permanent" in fdb_text
    mine = neighbours.fdb(ns.rt, dev)
    assert {mac: [str(ip) for ip in ips] for mac, ips in mine.items()} == _fdb(ns, dev)
    ns.rt.call(rtnl.fdb_del(dev, MAC_A))
    assert _fdb(ns, dev) == {MAC_B: ["192.0.2.4"]}
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.fdb_del(dev, MAC_A))
    assert err.value.errno == errno.ENOENT


def _routes(ns: Ns, family: int) -> dict[str, Any]:
    return {
        f"{m.get('RTA_DST')}/{m['dst_len']}": m
        for m in ns.pyr.get_routes(family=family, table=254)
        if m.get("RTA_DST")
    }


def test_marked_routes(ns: Ns) -> None:
    u0 = ns.index("u0")
    dev = _vx(ns)
    gw, vtep = packed("192.0.2.2"), packed("10.244.2.0")
    ns.rt.call(rtnl.route_set(2, packed("10.244.1.0"), 24, gateway=gw, oif=u0, protocol=PROTO))
    ns.rt.call(
        rtnl.route_set(
            2, packed("10.244.2.0"), 24, gateway=vtep, oif=dev, protocol=PROTO, onlink=True
        )
    )
    ns.rt.call(
        rtnl.route_set(
            10,
            packed("fd00:244:2::"),
            64,
            gateway=packed("fd00:244:2::"),
            oif=dev,
            protocol=PROTO,
            onlink=True,
        )
    )
    # a foreign route (static) to a destination of ours would be a conflict: EEXIST
    ns.ip("route", "add", "10.244.9.0/24", "via", "192.0.2.9", "proto", "static")
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.route_set(2, packed("10.244.9.0"), 24, gateway=gw, oif=u0, protocol=PROTO))
    assert err.value.errno == errno.EEXIST
    seen = _routes(ns, rtnl.AF_INET)
    direct, tunnelled = seen["10.244.1.0/24"], seen["10.244.2.0/24"]
    assert direct["proto"] == PROTO and direct.get("RTA_GATEWAY") == "192.0.2.2"
    assert direct.get("RTA_OIF") == u0 and not direct["flags"] & rtnl.RTNH_F_ONLINK
    assert tunnelled["proto"] == PROTO and tunnelled["flags"] & rtnl.RTNH_F_ONLINK
    assert tunnelled.get("RTA_GATEWAY") == "10.244.2.0" and tunnelled.get("RTA_OIF") == dev
    assert seen["10.244.9.0/24"]["proto"] == rtnl.RTPROT_STATIC
    six = _routes(ns, rtnl.AF_INET6)["fd00:244:2::/64"]
    assert six["proto"] == PROTO and six["flags"] & rtnl.RTNH_F_ONLINK
    assert six.get("RTA_PRIORITY") == 1024

    # the dump is filtered by protocol: ours only, read the same by us and by pyroute2
    ours = [rtnl.parse_route_msg(b) for b in ns.rt.call(rtnl.route_dump_protocol(2, PROTO))]
    assert {(m.dst_len, m.protocol, m.table) for m in ours} == {(24, PROTO, 254)}
    assert sorted(str(ipaddress.ip_address(m.attrs[rtnl.RTA_DST])) for m in ours) == [
        "10.244.1.0",
        "10.244.2.0",
    ]
    assert len(ns.rt.call(rtnl.route_dump_protocol(10, PROTO))) == 1

    # replace moves the route from vxlan to direct: same key, in place
    ns.rt.call(
        rtnl.route_set(
            2, packed("10.244.2.0"), 24, gateway=gw, oif=u0, protocol=PROTO, replace=True
        )
    )
    moved = _routes(ns, rtnl.AF_INET)["10.244.2.0/24"]
    assert moved.get("RTA_OIF") == u0 and moved.get("RTA_GATEWAY") == "192.0.2.2"
    assert not moved["flags"] & rtnl.RTNH_F_ONLINK

    # delete by protocol: ours goes, a foreign one is refused (ESRCH) and stays
    ns.rt.call(rtnl.route_del(2, packed("10.244.2.0"), 24, protocol=PROTO))
    with pytest.raises(NetlinkError) as err:
        ns.rt.call(rtnl.route_del(2, packed("10.244.9.0"), 24, protocol=PROTO))
    assert err.value.errno == errno.ESRCH
    ns.rt.call(rtnl.route_del(10, packed("fd00:244:2::"), 64, protocol=PROTO, priority=1024))
    assert set(_routes(ns, rtnl.AF_INET)) >= {"10.244.1.0/24", "10.244.9.0/24"}
    assert "10.244.2.0/24" not in _routes(ns, rtnl.AF_INET)
    assert "fd00:244:2::/64" not in _routes(ns, rtnl.AF_INET6)


def test_route_get_and_underlay(ns: Ns) -> None:
    u0 = ns.index("u0")
    (answer,) = ns.rt.call(rtnl.route_get(packed("192.0.2.7")))
    msg = rtnl.parse_route_msg(answer)
    assert rtnl.u32(msg.attrs[rtnl.RTA_OIF]) == u0
    assert msg.attrs[rtnl.RTA_PREFSRC] == packed("192.0.2.1")
    # the interface holding the node IP, with its connected networks
    found = underlay.find(ns.rt, ipaddress.ip_address("192.0.2.1"))
    assert (found.index, found.name, found.mtu) == (u0, "u0", 1500)
    assert found.subnets == (ipaddress.ip_network("192.0.2.0/24"),)
    assert found.on_link(ipaddress.ip_address("192.0.2.200"))
    assert not found.on_link(ipaddress.ip_address("198.51.100.1"))
    six = underlay.find(ns.rt, ipaddress.ip_address("2001:db8::1"))
    assert six.index == u0 and six.subnets == (ipaddress.ip_network("2001:db8::/64"),)
    # not on this node: the interface of the route towards it, from its source address
    ns.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.254")
    nat = underlay.find(ns.rt, ipaddress.ip_address("198.51.100.7"))
    assert nat.index == u0 and str(nat.ip) == "192.0.2.1"
    with pytest.raises(OverlayError):
        underlay.find(ns.rt, ipaddress.ip_address("203.0.113.1"))


def test_batch_pipelines_and_reports_each_outcome(ns: Ns) -> None:
    dev = _vx(ns)
    requests = [
        rtnl.neigh_set(rtnl.AF_INET, dev, packed(f"10.{i // 250}.{i % 250}.1"), MAC_A)
        for i in range(1000)
    ]
    requests.insert(10, rtnl.link_del(4242))  # refused: ENODEV, and the rest goes on
    requests.insert(500, rtnl.neigh_del(rtnl.AF_INET, dev, packed("10.99.0.1")))  # ENOENT
    results = ns.rt.batch(requests, window=100)
    errors = {i: e.errno for i, e in enumerate(results) if e is not None}
    assert errors == {10: errno.ENODEV, 500: errno.ENOENT}
    assert len(_neighbours(ns, dev, rtnl.AF_INET)) == 1000
    # a window too large for the receive buffer loses acks: reported, never a hang
    deletes = [
        rtnl.neigh_del(rtnl.AF_INET, dev, packed(f"10.{i // 250}.{i % 250}.1")) for i in range(1000)
    ]
    with pytest.raises(NetlinkError) as err:
        ns.rt.batch(deletes, window=1000)
    assert err.value.errno == errno.ENOBUFS


def test_vxlan_ensure_keeps_fixes_and_recreates(ns: Ns) -> None:
    u0 = ns.index("u0")
    spec = vxlan.VxlanSpec(
        name="loxi-vx",
        vni=1,
        port=8472,
        local=ipaddress.ip_address("192.0.2.1"),
        underlay=u0,
        mtu=1450,
        mac=MAC_A,
        address=ipaddress.ip_interface("10.244.1.0/32"),
    )
    link, done = vxlan.ensure(ns.rt, spec)
    assert done == "created" and link.up and link.mtu == 1450 and link.mac == MAC_A
    addrs = {(m.get("IFA_ADDRESS"), m["prefixlen"]) for m in ns.pyr.get_addr(index=link.index)}
    assert ("10.244.1.0", 32) in addrs
    # kept as is: same index, nothing done
    again, done = vxlan.ensure(ns.rt, spec)
    assert done == "" and again == link
    # MTU, MAC, state and a stray address are corrected in place, same device
    ns.ip("link", "set", "loxi-vx", "down", "mtu", "1300", "address", MAC_B)
    ns.ip("addr", "add", "10.9.9.9/24", "dev", "loxi-vx")
    fixed, done = vxlan.ensure(ns.rt, spec)
    assert done == "" and fixed.index == link.index
    assert fixed.up and fixed.mtu == 1450 and fixed.mac == MAC_A
    addrs = {m.get("IFA_ADDRESS") for m in ns.pyr.get_addr(index=link.index, family=2)}
    assert addrs == {"10.244.1.0"}
    # what the kernel cannot change on a live device makes a new one
    moved = vxlan.VxlanSpec(**{**spec.__dict__, "vni": 7})
    new, done = vxlan.ensure(ns.rt, moved)
    assert done == "recreated: VNI 1 instead of 7" and new.vni == 7
    # a link of another kind with the name is not ours: refused, left alone
    with pytest.raises(OverlayError, match="not the overlay's vxlan"):
        vxlan.ensure(ns.rt, vxlan.VxlanSpec(**{**spec.__dict__, "name": "u0"}))
    assert not vxlan.delete(ns.rt, "u0") and ns.index("u0") == u0
    assert vxlan.delete(ns.rt, "loxi-vx") and not vxlan.delete(ns.rt, "loxi-vx")
