"""allocate / release / check / gc / status on our own."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loxicni.base import files
from loxicni.cni.errors import CniError, Code
from loxicni.ipam import hostlocal
from loxicni.ipam.config import Range, RangeSet
from tests.ipam.helpers import ips, leftovers, netconf, ours_add, parse

A = ipaddress.ip_address


def small(data_dir: Path, **extra: Any) -> dict[str, Any]:
    return netconf(data_dir, [[{"subnet": "10.1.0.0/29"}], [{"subnet": "fd00::/125"}]], **extra)


def test_allocate_result(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 1.1.1.1\nsearch a b\ndomain x\noptions ndots:5\n")
    conf = small(tmp_path, routes=[{"dst": "0.0.0.0/0"}], resolvConf=str(resolv))
    result = ours_add(conf, "c1")
    assert ips(result) == ["10.1.0.2/29", "fd00::2/125"]
    assert [str(c.gateway) for c in result.ips] == ["10.1.0.1", "fd00::1"]
    assert all(c.interface is None for c in result.ips)
    assert [str(r.dst) for r in result.routes] == ["0.0.0.0/0"]
    assert result.dns.nameservers == ["1.1.1.1"] and result.dns.search == ["a", "b"]
    assert result.dns.domain == "x" and result.dns.options == ["ndots:5"]


def test_round_robin_continues_after_the_last_reserved(tmp_path: Path) -> None:
    conf = small(tmp_path)
    cfg = parse(conf)
    assert ips(ours_add(conf, "a"))[0] == "10.1.0.2/29"
    ours_add(conf, "b")
    hostlocal.release(cfg, "a", "eth0")
    # .2 is free again, but round-robin goes on from .3
    assert ips(ours_add(conf, "c"))[0] == "10.1.0.4/29"


def test_exhaustion_and_all_or_nothing(tmp_path: Path) -> None:
    conf = netconf(tmp_path, [[{"subnet": "10.1.0.0/29"}], [{"subnet": "fd00::/126"}]])
    assert ips(ours_add(conf, "a")) == ["10.1.0.2/29", "fd00::2/126"]
    assert ips(ours_add(conf, "b")) == ["10.1.0.3/29", "fd00::3/126"]
    with pytest.raises(CniError) as info:  # IPv6 /126 holds ::2 and ::3 only
        ours_add(conf, "c")
    assert info.value.code == Code.ADDRESS_UNAVAILABLE
    assert leftovers(tmp_path / "net") == {"10.1.0.2", "10.1.0.3", "fd00::2", "fd00::3"}
    assert len(list((tmp_path / ".loxi-cni" / "net").iterdir())) == 2  # no entry for "c"


def test_rollback_frees_only_what_the_failed_add_took(tmp_path: Path) -> None:
    conf = small(tmp_path)
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "10.200.0.9").write_bytes(b"a\r\neth0")  # outside today's ranges
    with pytest.raises(CniError) as info:  # 10.9.9.9 fits no range: everything is given back
        ours_add(conf, "a", cni_args={"IP": "10.9.9.9"})
    assert info.value.code == Code.INVALID_CONFIG
    assert leftovers(tmp_path / "net") == {"10.200.0.9"}  # the reference would free this too
    assert (tmp_path / "net" / "last_reserved_ip.0").read_text() == "10.1.0.2"  # as reference


def test_io_failure_code(tmp_path: Path) -> None:
    (tmp_path / "net").write_text("")
    with pytest.raises(CniError) as info:
        ours_add(small(tmp_path), "a")
    assert info.value.code == Code.IO_FAILURE


def test_gateway_in_the_middle_is_skipped_and_ranges_chain(tmp_path: Path) -> None:
    conf = netconf(
        tmp_path,
        [
            [
                {"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.4", "gateway": "10.1.0.5"},
                {"subnet": "10.2.0.0/30"},
            ]
        ],
    )
    got = [ips(ours_add(conf, f"c{i}"))[0] for i in range(3)]
    assert got == ["10.1.0.4/29", "10.1.0.6/29", "10.2.0.2/30"]
    with pytest.raises(CniError):
        ours_add(conf, "c4")


def test_requested_ips(tmp_path: Path) -> None:
    conf = small(tmp_path)
    assert ips(ours_add(conf, "a", cni_args={"IP": "fd00::5,10.1.0.6"})) == [
        "10.1.0.6/29",
        "fd00::5/125",
    ]
    with pytest.raises(CniError) as info:
        ours_add(conf, "b", cni_args={"IP": "10.1.0.6"})
    assert info.value.code == Code.ADDRESS_UNAVAILABLE
    for bad in ("10.1.0.1", "10.9.0.1", "10.1.0.3,10.1.0.4"):
        with pytest.raises(CniError) as info:
            ours_add(conf, "b", cni_args={"IP": bad})
        assert info.value.code == Code.INVALID_CONFIG, bad
    assert leftovers(tmp_path / "net") == {"10.1.0.6", "fd00::5"}
    # a requested address in one set, round-robin in the other; as in the reference, the
    # failed attempts above moved the IPv6 round-robin on (to ::6, then ::7) before giving back
    assert ips(ours_add(conf, "c", cni_args={"IP": "10.1.0.3"})) == ["10.1.0.3/29", "fd00::2/125"]


def test_duplicate_allocation_is_refused(tmp_path: Path) -> None:
    conf = small(tmp_path)
    ours_add(conf, "a")
    with pytest.raises(CniError, match="duplicate allocation") as info:
        ours_add(conf, "a")
    assert info.value.code == Code.ADDRESS_UNAVAILABLE
    ours_add(conf, "a", ifname="eth1")  # another interface is another attachment
    # an old-format file of the container counts too, as in the reference
    (tmp_path / "net" / "10.1.0.6").write_text("old")
    with pytest.raises(CniError, match="duplicate"):
        ours_add(conf, "old")


def test_release_is_idempotent_and_creates_nothing(tmp_path: Path) -> None:
    conf = small(tmp_path)
    cfg = parse(conf)
    hostlocal.release(cfg, "a", "eth0")
    assert not (tmp_path / "net").exists()
    ours_add(conf, "a")
    hostlocal.release(cfg, "a", "eth0")
    hostlocal.release(cfg, "a", "eth0")
    assert leftovers(tmp_path / "net") == set()
    assert list((tmp_path / ".loxi-cni" / "net").iterdir()) == []


def test_check(tmp_path: Path) -> None:
    conf = small(tmp_path)
    cfg = parse(conf)
    with pytest.raises(CniError):
        hostlocal.check(cfg, "a", "eth0")
    ours_add(conf, "a")
    assert sorted(map(str, hostlocal.check(cfg, "a", "eth0"))) == ["10.1.0.2", "fd00::2"]
    with pytest.raises(CniError) as info:
        hostlocal.check(cfg, "a", "eth1")
    assert info.value.code == Code.CHECK_FAILED


def test_gc(tmp_path: Path) -> None:
    conf = small(tmp_path)
    cfg = parse(conf)
    for cid in ("keep", "gone"):
        ours_add(conf, cid)
    ours_add(conf, "keep", ifname="eth1")
    net = tmp_path / "net"
    (net / "10.1.0.6").write_text("legacy")  # old format: kept while the container is valid
    (net / "10.1.0.5").write_text("")  # torn: never valid
    released = hostlocal.gc(cfg, [("keep", "eth0"), ("legacy", "eth9")])
    assert sorted(map(str, released)) == [
        "10.1.0.3",
        "10.1.0.4",
        "10.1.0.5",
        "fd00::3",
        "fd00::4",
    ]
    assert leftovers(net) == {"10.1.0.2", "fd00::2", "10.1.0.6"}
    assert (net / "lock").exists() and (net / "last_reserved_ip.0").exists()
    assert len(list((tmp_path / ".loxi-cni" / "net").iterdir())) == 1
    assert sorted(map(str, hostlocal.gc(cfg, []))) == ["10.1.0.2", "10.1.0.6", "fd00::2"]
    assert leftovers(net) == set()
    assert list((tmp_path / ".loxi-cni" / "net").iterdir()) == []


def test_gc_keeps_what_was_reserved_after_it_started(tmp_path: Path) -> None:
    """The runtime's valid list is older than the GC call: a reservation made since GC
    started belongs to an ADD the list could not know of; one made just before is GC's to
    collect. Both within a tick of the file clock, as ADDs racing GC would be."""
    conf = small(tmp_path)
    cfg = parse(conf)
    for attempt in range(100):
        ours_add(conf, "old")  # just before GC started: GC's to collect
        started = files.file_time_mark_ns()
        ours_add(conf, "new")
        hostlocal.gc(cfg, [], started)
        with pytest.raises(CniError):
            hostlocal.check(cfg, "old", "eth0")
        assert len(hostlocal.check(cfg, "new", "eth0")) == 2, attempt
        hostlocal.release(cfg, "new", "eth0")
    assert leftovers(tmp_path / "net") == set()


def test_status(tmp_path: Path) -> None:
    hostlocal.status(parse(small(tmp_path / "fresh")))
    assert (tmp_path / "fresh" / "net" / "lock").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CniError) as info:
        hostlocal.status(parse(small(blocker / "sub")))
    assert info.value.code == Code.NOT_AVAILABLE


def test_missing_resolv_conf_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(CniError) as info:
        ours_add(small(tmp_path, resolvConf=str(tmp_path / "nope")), "a")
    assert info.value.code == Code.INVALID_CONFIG
    assert not (tmp_path / "net").exists()


# -- the iterator against a model -------------------------------------------------------------


@st.composite
def range_sets(draw: st.DrawFn) -> tuple[RangeSet, ipaddress.IPv4Address | None]:
    """1-3 disjoint small IPv4 ranges, gateways anywhere, and a last-reserved guess."""
    ranges = []
    for i in range(draw(st.integers(1, 3))):
        net = ipaddress.IPv4Network(f"10.{i}.0.0/28")
        start = draw(st.integers(1, 14))
        end = draw(st.integers(start, 14))
        gw = net.network_address + draw(st.integers(0, 15))
        ranges.append(
            Range(net, net.network_address + start, net.network_address + end, gateway=gw)
        )
    last = draw(
        st.none()
        | st.builds(lambda i, h: A(f"10.{i}.0.{h}"), st.integers(0, 3), st.integers(0, 15))
    )
    return RangeSet(tuple(ranges)), last  # type: ignore[return-value]


@settings(max_examples=300)
@given(range_sets())
def test_candidates_visit_every_address_once_from_after_the_last(
    case: tuple[RangeSet, ipaddress.IPv4Address | None],
) -> None:
    rs, last = case
    flat = [
        (r, r.range_start + k)
        for r in rs.ranges
        for k in range(int(r.range_end) - int(r.range_start) + 1)
    ]
    addrs = [ip for _, ip in flat]
    first = addrs.index(last) + 1 if last in addrs else 0
    rotated = [flat[(first + k) % len(flat)] for k in range(len(flat))]
    expected = [(r, ip) for r, ip in rotated if ip != r.gateway]
    assert list(hostlocal.candidates(rs, last)) == expected
