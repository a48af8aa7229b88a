"""parse_host_local: defaults, ordering and validation as in the reference's config.go/range.go."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loxicni.cni.addresses import parse_ip
from loxicni.cni.addresses import parse_pool_cidr as parse_cidr
from loxicni.cni.errors import CniError, Code
from loxicni.ipam.config import DEFAULT_DATA_DIR, parse_host_local
from tests.ipam.helpers import netconf, parse

D = Path("/tmp/unused-data-dir")
A = ipaddress.ip_address
N = ipaddress.ip_network


def one_range(**fields: Any) -> list[list[dict[str, Any]]]:
    return [[fields]]


def test_ipv4_defaults_claim_dot1_and_stop_before_broadcast() -> None:
    cfg = parse(netconf(D, one_range(subnet="192.0.2.0/24")))
    (r,) = cfg.range_sets[0].ranges
    assert (r.subnet, r.range_start, r.range_end, r.gateway) == (
        N("192.0.2.0/24"),
        A("192.0.2.1"),
        A("192.0.2.254"),
        A("192.0.2.1"),
    )
    assert parse(netconf(D, one_range(subnet="192.0.2.0/25"))).range_sets[0].ranges[
        0
    ].range_end == (A("192.0.2.126"))


def test_ipv6_defaults_run_to_the_last_address() -> None:
    (r,) = parse(netconf(D, one_range(subnet="2001:DB8:1::/64"))).range_sets[0].ranges
    assert r.range_start == r.gateway == A("2001:db8:1::1")
    assert r.range_end == A("2001:db8:1::ffff:ffff:ffff:ffff")


def test_explicit_fields_and_other_settings() -> None:
    conf = netconf(
        D,
        one_range(
            subnet="192.0.2.0/24",
            rangeStart="192.0.2.40",
            rangeEnd="192.0.2.50",
            gateway="192.0.2.254",
        ),
        routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.5/8", "gw": "192.0.2.1", "mtu": 1400}],
        resolvConf="/etc/resolv.conf",
    )
    cfg = parse(conf)
    (r,) = cfg.range_sets[0].ranges
    assert (str(r.range_start), str(r.range_end), str(r.gateway)) == (
        "192.0.2.40",
        "192.0.2.50",
        "192.0.2.254",
    )
    assert cfg.network == "net" and cfg.data_dir == D and cfg.resolv_conf == "/etc/resolv.conf"
    assert [str(x.dst) for x in cfg.routes] == ["0.0.0.0/0", "10.0.0.0/8"]  # host bits masked
    assert cfg.routes[1].gw == A("192.0.2.1") and cfg.routes[1].mtu == 1400
    assert cfg.network_dir == D / "net"


def test_data_dir_defaults_like_the_reference() -> None:
    conf = netconf(D, one_range(subnet="10.0.0.0/24"))
    del conf["ipam"]["dataDir"]
    assert parse(conf).data_dir == DEFAULT_DATA_DIR
    conf["ipam"]["dataDir"] = ""
    assert parse(conf).data_dir == DEFAULT_DATA_DIR


def test_range_set_order_runtime_then_legacy_then_ranges() -> None:
    """The index of each set names its last_reserved_ip file, so the order must match."""
    conf = netconf(
        D,
        [[{"subnet": "10.3.0.0/24"}]],
        subnet="10.2.0.0/24",
        rangeStart="10.2.0.10",
        runtimeConfig={"ipRanges": [[{"subnet": "10.1.0.0/24"}]]},
    )
    cfg = parse(conf)
    assert [str(rs.ranges[0].subnet) for rs in cfg.range_sets] == [
        "10.1.0.0/24",
        "10.2.0.0/24",
        "10.3.0.0/24",
    ]
    assert cfg.range_sets[1].ranges[0].range_start == A("10.2.0.10")


def test_legacy_fields_without_subnet_are_ignored_like_the_reference() -> None:
    cfg = parse(netconf(D, [[{"subnet": "10.5.0.0/24"}]], rangeStart="10.0.0.1"))
    assert len(cfg.range_sets) == 1


def test_keys_match_case_insensitively_like_go_json() -> None:
    cfg = parse(netconf(D, [[{"Subnet": "10.6.0.0/24", "RangeStart": "10.6.0.100"}]]))
    assert cfg.range_sets[0].ranges[0].range_start == A("10.6.0.100")


def test_empty_optional_strings_mean_unset() -> None:
    cfg = parse(netconf(D, one_range(subnet="10.6.0.0/24", gateway="", rangeStart="")))
    assert cfg.range_sets[0].ranges[0].gateway == A("10.6.0.1")


def test_gateway_outside_the_subnet_is_accepted_like_the_reference() -> None:
    cfg = parse(netconf(D, one_range(subnet="10.6.0.0/24", gateway="192.168.0.1")))
    assert cfg.range_sets[0].ranges[0].gateway == A("192.168.0.1")


def test_explicit_network_and_broadcast_bounds_are_allowed() -> None:
    (r,) = (
        parse(
            netconf(D, one_range(subnet="10.1.0.8/29", rangeStart="10.1.0.8", rangeEnd="10.1.0.15"))
        )
        .range_sets[0]
        .ranges
    )
    assert (r.range_start, r.range_end) == (A("10.1.0.8"), A("10.1.0.15"))


def test_ipv4_mapped_addresses_become_ipv4() -> None:
    cfg = parse(
        netconf(
            D,
            one_range(subnet="10.6.0.0/24", rangeStart="::ffff:10.6.0.40"),
            args={"cni": {"ips": ["::ffff:10.6.0.50"]}},
        )
    )
    assert cfg.range_sets[0].ranges[0].range_start == A("10.6.0.40")
    assert cfg.requested == (A("10.6.0.50"),)


def test_requested_ips_in_reference_order_deduplicated() -> None:
    conf = netconf(
        D,
        [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]],
        args={"cni": {"ips": ["10.0.0.7/24", "fd00::7"]}},
        runtimeConfig={"ips": ["10.0.0.9", "10.0.0.5"]},
    )
    cfg = parse(conf, {"IP": "10.0.0.5,fd00::5", "K8S_POD_NAME": "x"})
    assert [str(i) for i in cfg.requested] == [
        "10.0.0.5",
        "fd00::5",
        "10.0.0.7",
        "fd00::7",
        "10.0.0.9",
    ]
    assert parse(conf, {"IP": ""}).requested[0] == A("10.0.0.7")


def test_cni_version_below_030_allows_one_range_set_per_family() -> None:
    two_v4 = [[{"subnet": "10.6.0.0/24"}], [{"subnet": "10.7.0.0/24"}]]
    assert len(parse(netconf(D, two_v4)).range_sets) == 2
    with pytest.raises(CniError, match="cniVersion"):
        parse(netconf(D, two_v4, cniVersion="0.2.0"))
    v4_v6 = [[{"subnet": "10.6.0.0/24"}], [{"subnet": "fd00::/64"}]]
    assert len(parse(netconf(D, v4_v6, cniVersion="0.2.0")).range_sets) == 2


BAD: list[tuple[dict[str, Any], dict[str, str], str]] = [
    ({"ranges": one_range(subnet="10.0.0.0/33")}, {}, "ipam.ranges[0][0].subnet"),
    ({"ranges": one_range(subnet="10.0.0.0")}, {}, "ipam.ranges[0][0].subnet"),
    ({"ranges": one_range(subnet="10.0.0.0/+8")}, {}, "ipam.ranges[0][0].subnet"),
    ({"ranges": one_range(subnet="fe80::%eth0/64")}, {}, "ipam.ranges[0][0].subnet"),
    ({"ranges": one_range(subnet="::ffff:10.0.0.0/120")}, {}, "ipam.ranges[0][0].subnet"),
    ({"ranges": one_range(subnet=24)}, {}, "ipam.ranges[0][0].subnet"),
    ({"ranges": one_range(rangeStart="10.0.0.1")}, {}, "ipam.ranges[0][0].subnet"),
    ({"ranges": one_range(subnet="10.3.0.0/31")}, {}, "too small"),
    ({"ranges": one_range(subnet="fd00::/127")}, {}, "too small"),
    ({"ranges": one_range(subnet="10.3.0.5/24")}, {}, "host bits"),
    ({"ranges": one_range(subnet="10.0.0.0/24", rangeStart="10.0.1.0")}, {}, "].rangeStart"),
    ({"ranges": one_range(subnet="10.0.0.0/24", rangeEnd="10.0.4.0")}, {}, "].rangeEnd"),
    ({"ranges": one_range(subnet="10.0.0.0/24", rangeEnd="fd00::4")}, {}, "].rangeEnd"),
    (
        {"ranges": one_range(subnet="10.0.0.0/24", rangeStart="10.0.0.50", rangeEnd="10.0.0.40")},
        {},
        "].rangeStart",
    ),
    ({"ranges": one_range(subnet="10.0.0.0/24", rangeStart="10.0.0.x")}, {}, "not an IP"),
    ({"ranges": one_range(subnet="10.0.0.0/24", gateway="fd00::1")}, {}, "].gateway"),
    (
        {"ranges": [[{"subnet": "10.3.0.0/24"}, {"subnet": "10.3.0.0/25"}]]},
        {},
        "ipam.ranges[0][1]: range 10.3.0.1-10.3.0.126 overlaps",
    ),
    (
        {"ranges": [[{"subnet": "10.3.0.0/24"}], [{"subnet": "10.3.0.0/25"}]]},
        {},
        "ipam.ranges[1]: range set overlaps ipam.ranges[0]",
    ),
    ({"ranges": [[{"subnet": "10.3.0.0/24"}, {"subnet": "fd00::/64"}]]}, {}, "mixed"),
    ({"ranges": [[]]}, {}, "ipam.ranges[0]: empty range set"),
    ({"ranges": []}, {}, "no IP ranges"),
    ({"ranges": "10.0.0.0/8"}, {}, "ipam.ranges: must be an array"),
    ({"subnet": ""}, {}, "ipam.subnet"),
    ({"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.1"}, {}, "ipam.rangeEnd"),
    ({"ranges": one_range(subnet="10.0.0.0/24"), "routes": [{"gw": "10.0.0.1"}]}, {}, "].dst"),
    (
        {"ranges": one_range(subnet="10.0.0.0/24"), "routes": [{"dst": "0.0.0.0/0", "gw": "::1"}]},
        {},
        "ipam.routes[0].gw",
    ),
    (
        {"ranges": one_range(subnet="10.0.0.0/24"), "routes": [{"dst": "::/0", "mtu": "9000"}]},
        {},
        "ipam.routes[0].mtu",
    ),
    ({"ranges": one_range(subnet="10.0.0.0/24"), "dataDir": 5}, {}, "ipam.dataDir"),
    ({"ranges": one_range(subnet="10.0.0.0/24"), "type": "dhcp"}, {}, "ipam.type"),
    ({"ranges": one_range(subnet="10.0.0.0/24")}, {"IP": "10.0.0.5,"}, "CNI_ARGS IP"),
    ({"ranges": one_range(subnet="10.0.0.0/24")}, {"IP": "10.0.0.5;"}, "CNI_ARGS IP"),
    (
        {"ranges": one_range(subnet="10.0.0.0/24"), "args": {"cni": {"ips": ["x"]}}},
        {},
        "args.cni.ips[0]",
    ),
    (
        {"ranges": one_range(subnet="10.0.0.0/24"), "runtimeConfig": {"ips": [1]}},
        {},
        "runtimeConfig.ips[0]",
    ),
    (
        {"ranges": one_range(subnet="10.0.0.0/24"), "runtimeConfig": {"ipRanges": [[{}]]}},
        {},
        "runtimeConfig.ipRanges[0][0].subnet",
    ),
]


@pytest.mark.parametrize(("ipam", "cni_args", "field"), BAD)
def test_bad_values_are_invalid_config_naming_the_field(
    ipam: dict[str, Any], cni_args: dict[str, str], field: str
) -> None:
    conf = netconf(D)
    ranges_missing = "ranges" not in ipam
    extra: dict[str, Any] = {k: ipam[k] for k in ("runtimeConfig", "args") if k in ipam}
    conf["ipam"].update({k: v for k, v in ipam.items() if k not in extra})
    conf.update(extra)
    if ranges_missing:
        conf["ipam"].pop("ranges", None)
    with pytest.raises(CniError) as info:
        parse_host_local(conf, cni_args)
    assert info.value.code == Code.INVALID_CONFIG
    assert field in info.value.msg


@pytest.mark.parametrize(
    "conf",
    [
        {"ipam": {"ranges": one_range(subnet="10.0.0.0/24")}},
        {"name": "../etc", "ipam": {"ranges": one_range(subnet="10.0.0.0/24")}},
        {"name": ".loxi-cni", "ipam": {"ranges": one_range(subnet="10.0.0.0/24")}},
        {"name": "net\n", "ipam": {"ranges": one_range(subnet="10.0.0.0/24")}},
        {"name": "net"},
        {"name": "net", "ipam": []},
        {"name": "net", "ipam": {"ranges": one_range(subnet="10.0.0.0/24")}, "args": []},
    ],
)
def test_bad_top_level(conf: dict[str, Any]) -> None:
    with pytest.raises(CniError) as info:
        parse_host_local(conf, {})
    assert info.value.code == Code.INVALID_CONFIG


# -- property tests for the parsers -------------------------------------------------------------

v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(
    lambda a: a.ipv4_mapped is None
)


@given(st.one_of(v4, v6), st.data())
def test_parse_cidr_round_trips_and_keeps_host_bits(addr: Any, data: st.DataObject) -> None:
    prefix = data.draw(st.integers(0, addr.max_prefixlen))
    zeros = data.draw(st.sampled_from(["", "0", "00"]))
    assert parse_cidr(f"{addr}/{zeros}{prefix}") == (addr, prefix)
    assert parse_cidr(f"{addr.exploded}/{prefix}") == (addr, prefix)
    assert parse_ip(str(addr)) == addr


@given(st.text(max_size=50))
def test_parsers_only_raise_value_error(text: str) -> None:
    for fn in (parse_cidr, parse_ip):
        with contextlib.suppress(ValueError):
            fn(text)


@st.composite
def range_case(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    """A single-range config around a random IPv4 subnet, with bounds that may be wrong."""
    prefix = draw(st.integers(16, 32))
    net = ipaddress.ip_network((draw(v4), prefix), strict=False)
    host_bits = draw(st.booleans()) and prefix < 32
    base = net.network_address + (1 if host_bits else 0)
    fields: dict[str, Any] = {"subnet": f"{base}/{prefix}"}
    lo, hi = int(net.network_address) - 4, int(net.broadcast_address) + 4

    def near() -> str:
        return str(ipaddress.IPv4Address(max(0, min(2**32 - 1, draw(st.integers(lo, hi))))))

    for key in ("rangeStart", "rangeEnd", "gateway"):
        if draw(st.booleans()):
            fields[key] = near()
    return fields, (None if host_bits else net)


@settings(max_examples=300)
@given(range_case())
def test_single_range_validation_matches_a_model(case: tuple[dict[str, Any], Any]) -> None:
    fields, net = case
    conf = netconf(D, [[fields]])
    model_ok = net is not None and net.prefixlen <= 30
    if model_ok:
        assert net is not None
        start = ipaddress.IPv4Address(fields.get("rangeStart", str(net.network_address + 1)))
        end = ipaddress.IPv4Address(fields.get("rangeEnd", str(net.broadcast_address - 1)))
        model_ok = start in net and end in net and start <= end
    try:
        cfg = parse(conf)
    except CniError as e:
        assert e.code == Code.INVALID_CONFIG
        assert not model_ok, e.msg
        return
    assert model_ok
    (r,) = cfg.range_sets[0].ranges
    assert (r.range_start, r.range_end) == (start, end)
    assert r.gateway == ipaddress.IPv4Address(fields.get("gateway", str(net.network_address + 1)))
    assert r.contains(start) and r.contains(end)
    if int(end) < 2**32 - 1:  # the top of the address space has no next address
        assert not r.contains(end + 1)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["subnet", "rangeStart", "rangeEnd", "gateway", "ranges", "routes", "dataDir", "type"]
        ),
        json_values,
    ),
    json_values,
)
def test_garbage_configs_only_raise_cni_errors(ipam: dict[str, Any], runtime: Any) -> None:
    conf = {"cniVersion": "1.0.0", "name": "n", "ipam": ipam, "runtimeConfig": runtime}
    try:
        parse_host_local(conf, {})
    except CniError as e:
        assert e.code == Code.INVALID_CONFIG
