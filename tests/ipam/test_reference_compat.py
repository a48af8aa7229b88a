"""Side by side with the reference host-local binary: same choices, same bytes, shared state."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loxicni.cni.errors import CniError
from loxicni.ipam import hostlocal
from loxicni.ipam.store import Store
from tests.ipam.helpers import (
    HOST_LOCAL,
    ips,
    leftovers,
    needs_reference,
    netconf,
    ours_add,
    parse,
    reference_ips,
    run_reference,
    snapshot,
    with_data_dir,
)

pytestmark = needs_reference

MULTI = [
    [
        {"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.3", "gateway": "10.1.0.5"},
        {"subnet": "10.2.0.0/30"},
    ],
    [{"subnet": "fd00::/125", "rangeEnd": "fd00::5"}],
]


def ours(conf: dict[str, Any], op: str, cid: str, cni_args: dict[str, str] | None = None) -> Any:
    if op == "DEL":
        hostlocal.release(parse(conf, cni_args), cid, "eth0")
        return None
    try:
        return ips(hostlocal.allocate(parse(conf, cni_args), cid, "eth0"))
    except CniError:
        return "error"


def theirs(conf: dict[str, Any], op: str, cid: str, cni_args: str = "") -> Any:
    out = run_reference(op, conf, cid, cni_args=cni_args)
    if op == "DEL":
        assert "code" not in out, out
        return None
    return "error" if "code" in out else reference_ips(out)


def test_same_sequence_same_files_same_modes(tmp_path: Path) -> None:
    """Round-robin, gateway skipping, range chaining, wrap-around and exhaustion, step by step."""
    mine = netconf(tmp_path / "ours", MULTI)
    ref = with_data_dir(mine, tmp_path / "ref")
    ops = [("ADD", f"c{i}") for i in range(4)]
    ops += [("DEL", "c1"), ("DEL", "c3")]
    ops += [("ADD", f"c{i}") for i in range(4, 9)]
    ops += [("DEL", "c0"), ("DEL", "c5"), ("ADD", "c9"), ("ADD", "c10"), ("ADD", "c11")]
    seen = []
    for op, cid in ops:
        expected = theirs(ref, op, cid)
        assert ours(mine, op, cid) == expected, (op, cid)
        seen.append(expected)
    assert "error" in seen  # the pools did run dry
    assert snapshot(tmp_path / "ours" / "net") == snapshot(tmp_path / "ref" / "net")


def test_requested_ips_like_the_reference(tmp_path: Path) -> None:
    mine = netconf(
        tmp_path / "ours",
        MULTI,
        args={"cni": {"ips": ["fd00::4"]}},
        runtimeConfig={"ips": ["10.2.0.2/30"]},
    )
    ref = with_data_dir(mine, tmp_path / "ref")
    assert ours(mine, "ADD", "a") == theirs(ref, "ADD", "a") == ["10.2.0.2/30", "fd00::4/125"]
    plain = netconf(tmp_path / "ours", MULTI)
    plain_ref = with_data_dir(plain, tmp_path / "ref")
    for ip in ("10.1.0.6", "10.1.0.5", "10.1.0.6", "10.9.9.9", "10.1.0.2"):
        assert ours(plain, "ADD", f"r{ip}", {"IP": ip}) == theirs(
            plain_ref, "ADD", f"r{ip}", f"IP={ip}"
        ), ip
    assert snapshot(tmp_path / "ours" / "net") == snapshot(tmp_path / "ref" / "net")


def test_dns_and_routes_like_the_reference(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "nameserver 1.1.1.1\n# c\n;x\nsearch a b\nsearch c\ndomain x\ndomain y\n"
        "options ndots:5 rotate\nnameserver\n  nameserver 8.8.8.8 extra\r\n"
    )
    mine = netconf(
        tmp_path / "ours",
        [[{"subnet": "10.4.0.0/24"}]],
        resolvConf=str(resolv),
        routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.4.0.9"}],
    )
    out = run_reference("ADD", with_data_dir(mine, tmp_path / "ref"), "a")
    result = ours_add(mine, "a")
    dns = result.dns
    assert out["dns"] == {
        "nameservers": dns.nameservers,
        "domain": dns.domain,
        "search": dns.search,
        "options": dns.options,
    }
    assert out["routes"] == [
        {"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw else {})} for r in result.routes
    ]


PARITY = [
    [[{"subnet": "10.3.0.0/31"}]],
    [[{"subnet": "10.3.0.0/30"}]],
    [[{"subnet": "fd00::/127"}]],
    [[{"subnet": "fd00::/126"}]],
    [[{"subnet": "10.3.0.5/24"}]],
    [[{"subnet": "10.3.0.0/24", "rangeStart": "10.3.0.50", "rangeEnd": "10.3.0.40"}]],
    [[{"subnet": "10.3.0.0/24", "rangeStart": "10.3.0.50", "rangeEnd": "10.3.0.50"}]],
    [[{"subnet": "10.3.0.0/24", "rangeEnd": "10.3.1.40"}]],
    [[{"subnet": "10.3.0.0/24", "rangeStart": "10.3.0.0"}]],
    [[{"subnet": "10.3.0.0/24", "gateway": "10.9.9.9"}]],
    [[{"subnet": "10.3.0.0/24"}, {"subnet": "10.3.0.0/25"}]],
    [
        [
            {"subnet": "10.3.0.0/24", "rangeEnd": "10.3.0.127"},
            {"subnet": "10.3.0.0/24", "rangeStart": "10.3.0.128"},
        ]
    ],
    [[{"subnet": "10.3.0.0/24"}], [{"subnet": "10.3.0.0/25"}]],
    [[{"subnet": "10.3.0.0/24"}, {"subnet": "fd00::/64"}]],
    [[]],
    [],
    [[{"subnet": "10.3.0.0/024"}]],
    [[{"subnet": "10.3.0.0/33"}]],
    [[{"subnet": "::ffff:10.3.0.0/120"}]],
]


@pytest.mark.parametrize("ranges", PARITY)
def test_accepts_and_rejects_what_the_reference_does(
    tmp_path: Path, ranges: list[list[dict[str, Any]]]
) -> None:
    mine = netconf(tmp_path / "ours", ranges)
    assert ours(mine, "ADD", "a") == theirs(with_data_dir(mine, tmp_path / "ref"), "ADD", "a")


@st.composite
def dual_ranges(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """A random IPv4 range (maybe invalid) plus a small IPv6 one."""
    prefix = draw(st.integers(26, 31))
    net = ipaddress.IPv4Network(
        f"10.{draw(st.integers(0, 255))}.{draw(st.integers(0, 255))}.0/{prefix}", strict=False
    )
    lo, hi = int(net.network_address) - 2, int(net.broadcast_address) + 2
    v4: dict[str, Any] = {"subnet": str(net)}
    for key in ("rangeStart", "rangeEnd", "gateway"):
        if draw(st.booleans()):
            v4[key] = str(ipaddress.IPv4Address(draw(st.integers(lo, hi))))
    v6: dict[str, Any] = {"subnet": "fd00::/125"}
    if draw(st.booleans()):
        v6["gateway"] = f"fd00::{draw(st.integers(0, 7))}"
    return [[v4], [v6]]


def _starts_past_default_end(r: dict[str, Any]) -> bool:
    net = ipaddress.ip_network(r["subnet"])
    if "rangeStart" not in r or "rangeEnd" in r:
        return False
    start = ipaddress.ip_address(r["rangeStart"])
    return start in net and int(start) > int(net.broadcast_address) - 1


@settings(
    max_examples=int(os.environ.get("LOXI_DIFF_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(dual_ranges())
def test_random_configs_allocate_like_the_reference(ranges: list[list[dict[str, Any]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mine = netconf(Path(tmp) / "ours", ranges)
        ref = with_data_dir(mine, Path(tmp) / "ref")
        if _starts_past_default_end(ranges[0][0]):
            # Deliberate deviation: the reference accepts this and hands out the broadcast
            # address, then addresses outside the subnet; we refuse the config.
            assert ours(mine, "ADD", "a") == "error"
            return
        for cid in ("a", "b", "c"):
            assert ours(mine, "ADD", cid) == theirs(ref, "ADD", cid), ranges
        if (Path(tmp) / "ref" / "net").exists():
            assert snapshot(Path(tmp) / "ours" / "net") == snapshot(Path(tmp) / "ref" / "net")


ops = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["ADD", "DEL"]), st.integers(0, 6), st.none()),
        st.tuples(
            st.just("ADD"),
            st.none(),
            st.sampled_from(
                ["10.1.0.3", "10.1.0.5", "10.1.0.7", "10.2.0.2", "10.9.0.1", "fd00::4"]
            ),
        ),
    ),
    max_size=25,
)


@settings(
    max_examples=int(os.environ.get("LOXI_DIFF_EXAMPLES", "60")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops)
def test_random_operation_sequences_match_the_reference(
    sequence: list[tuple[str, int | None, str | None]],
) -> None:
    """Every step gives the same answer, and the directories end up byte-identical, even
    through exhaustion, wrap-around and failed requests (whose side effects the reference keeps).
    Requests use fresh container IDs: re-adding an attachment with a request is where we
    deliberately differ (we refuse the duplicate)."""
    with tempfile.TemporaryDirectory() as tmp:
        mine = netconf(Path(tmp) / "ours", MULTI)
        ref = with_data_dir(mine, Path(tmp) / "ref")
        for n, (op, who, ip) in enumerate(sequence):
            cid = f"c{who}" if ip is None else f"r{n}"
            cni_args = f"IP={ip}" if ip else ""
            expected = theirs(ref, op, cid, cni_args)
            assert ours(mine, op, cid, {"IP": ip} if ip else None) == expected, (n, op, cid, ip)
        # (a DEL on a network never used creates nothing here; the reference makes dir and lock)
        assert _state(Path(tmp) / "ours" / "net") == _state(Path(tmp) / "ref" / "net")


def _state(net: Path) -> dict[str, tuple[bytes, int]]:
    return {k: v for k, v in snapshot(net).items() if k != "lock"} if net.exists() else {}


def test_reference_reservation_released_by_us_through_the_fallback(tmp_path: Path) -> None:
    conf = netconf(tmp_path, MULTI)
    assert theirs(conf, "ADD", "ref") == ["10.1.0.3/29", "fd00::2/125"]
    net = tmp_path / "net"
    assert (net / "10.1.0.3").read_bytes() == b"ref\r\neth0"
    assert not (tmp_path / ".loxi-cni" / "net").exists()  # the reference knows nothing of it
    cfg = parse(conf)
    assert sorted(map(str, hostlocal.check(cfg, "ref", "eth0"))) == ["10.1.0.3", "fd00::2"]
    hostlocal.release(cfg, "ref", "eth0")
    assert leftovers(net) == set()


def test_our_reservation_released_by_the_reference(tmp_path: Path) -> None:
    conf = netconf(tmp_path, MULTI)
    ours_add(conf, "mine")
    assert run_reference("CHECK", conf, "mine") == {}
    assert theirs(conf, "DEL", "mine") is None
    assert leftovers(tmp_path / "net") == set()
    # our stale index entry is harmless: a fresh ADD works, and GC prunes it
    assert ips(ours_add(conf, "mine")) == ["10.1.0.4/29", "fd00::3/125"]
    assert theirs(conf, "DEL", "mine") is None
    hostlocal.gc(parse(conf), [])
    assert list((tmp_path / ".loxi-cni" / "net").iterdir()) == []


def test_round_robin_and_duplicates_are_shared(tmp_path: Path) -> None:
    conf = netconf(tmp_path, MULTI)
    assert theirs(conf, "ADD", "a") == ["10.1.0.3/29", "fd00::2/125"]
    assert ours(conf, "ADD", "b") == ["10.1.0.4/29", "fd00::3/125"]
    assert theirs(conf, "ADD", "c") == ["10.1.0.6/29", "fd00::4/125"]
    assert ours(conf, "ADD", "a") == "error"  # duplicate of the reference's allocation
    assert theirs(conf, "ADD", "b") == "error"  # and the other way round
    assert leftovers(tmp_path / "net") == {
        "10.1.0.3",
        "10.1.0.4",
        "10.1.0.6",
        "fd00::2",
        "fd00::3",
        "fd00::4",
    }


def test_old_format_reservation_migrates(tmp_path: Path) -> None:
    """A node moving from an old host-local keeps its reservations and can free them."""
    conf = netconf(tmp_path, MULTI)
    theirs(conf, "ADD", "x")  # create the directory the reference way
    theirs(conf, "DEL", "x")
    (tmp_path / "net" / "10.1.0.4").write_text("legacy")
    assert ours(conf, "ADD", "other") == ["10.1.0.6/29", "fd00::3/125"]  # .4 is taken
    hostlocal.release(parse(conf), "legacy", "eth0")
    assert not (tmp_path / "net" / "10.1.0.4").exists()


def test_the_lock_is_the_reference_lock(tmp_path: Path) -> None:
    conf = netconf(tmp_path, MULTI)
    store = Store(tmp_path, "net")
    with store.locked():
        proc = subprocess.Popen(
            [str(HOST_LOCAL)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": "blocked",
                "CNI_NETNS": "/proc/self/ns/net",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": str(HOST_LOCAL.parent),
            },
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        time.sleep(0.5)
        assert proc.poll() is None, "the reference did not wait for our lock"
        assert leftovers(tmp_path / "net") == set()
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert proc.wait(timeout=30) == 0
    assert reference_ips(json.loads(out)) == ["10.1.0.3/29", "fd00::2/125"]
