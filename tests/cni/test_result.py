"""Result encoding (field by field, per version) and decoding (including every rejection)."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest

from loxicni.cni.errors import CniError, Code
from loxicni.cni.result import result_from_json, result_to_json
from loxicni.cni.types import DNS, Interface, IPConfig, Result, Route
from loxicni.cni.version import SUPPORTED_VERSIONS


def full_result() -> Result:
    """A result using every field, two addresses per family, both route families."""
    return Result(
        interfaces=[
            Interface(name="cni0", mac="0a:58:0a:f4:01:01", mtu=1450),
            Interface(
                name="eth0",
                mac="0a:58:0a:f4:01:05",
                mtu=1450,
                sandbox="/var/run/netns/pod",
                socket_path="/run/vhost.sock",
                pci_id="0000:00:1f.6",
            ),
        ],
        ips=[
            IPConfig(ip_interface("10.244.1.5/24"), ip_address("10.244.1.1"), 1),
            IPConfig(ip_interface("fd00::5/64"), ip_address("fd00::1"), 1),
            IPConfig(ip_interface("10.245.0.9/16"), None, 0),
            IPConfig(ip_interface("fd01::9/64")),
        ],
        routes=[
            Route(ip_network("0.0.0.0/0"), ip_address("10.244.1.1"), 1400, 1360, 10, 100, 0),
            Route(ip_network("::/0"), ip_address("fd00::1")),
            Route(ip_network("192.168.0.0/16")),
        ],
        dns=DNS(["10.96.0.10"], "cluster.local", ["svc.cluster.local"], ["ndots:5"]),
    )


# --------------------------------------------------------------------------- 1.1.0


def test_v110_shape_field_by_field() -> None:
    out = result_to_json(full_result(), "1.1.0")
    assert list(out) == ["cniVersion", "interfaces", "ips", "routes", "dns"]
    assert out["cniVersion"] == "1.1.0"
    assert out["interfaces"] == [
        {"name": "cni0", "mac": "0a:58:0a:f4:01:01", "mtu": 1450},
        {
            "name": "eth0",
            "mac": "0a:58:0a:f4:01:05",
            "mtu": 1450,
            "sandbox": "/var/run/netns/pod",
            "socketPath": "/run/vhost.sock",
            "pciID": "0000:00:1f.6",
        },
    ]
    assert out["ips"] == [
        {"interface": 1, "address": "10.244.1.5/24", "gateway": "10.244.1.1"},
        {"interface": 1, "address": "fd00::5/64", "gateway": "fd00::1"},
        {"interface": 0, "address": "10.245.0.9/16"},
        {"address": "fd01::9/64"},
    ]
    assert out["routes"] == [
        {
            "dst": "0.0.0.0/0",
            "gw": "10.244.1.1",
            "mtu": 1400,
            "advmss": 1360,
            "priority": 10,
            "table": 100,
            "scope": 0,
        },
        {"dst": "::/0", "gw": "fd00::1"},
        {"dst": "192.168.0.0/16"},
    ]
    assert out["dns"] == {
        "nameservers": ["10.96.0.10"],
        "domain": "cluster.local",
        "search": ["svc.cluster.local"],
        "options": ["ndots:5"],
    }


def test_interface_index_zero_is_kept() -> None:
    out = result_to_json(full_result(), "1.1.0")
    assert out["ips"][2]["interface"] == 0


def test_route_table_and_scope_zero_are_kept_but_zero_mtu_is_unset() -> None:
    r = Result(
        routes=[Route(ip_network("10.0.0.0/8"), mtu=0, advmss=0, priority=0, table=0, scope=0)]
    )
    assert result_to_json(r, "1.1.0")["routes"] == [{"dst": "10.0.0.0/8", "table": 0, "scope": 0}]


def test_interface_mtu_zero_is_omitted() -> None:
    r = Result(interfaces=[Interface(name="eth0", mtu=0)])
    assert result_to_json(r, "1.1.0")["interfaces"] == [{"name": "eth0"}]


def test_interface_name_always_present_even_empty() -> None:
    r = Result(interfaces=[Interface(name="")])
    assert result_to_json(r, "1.0.0")["interfaces"] == [{"name": ""}]


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_v1_empty_result_is_only_the_version(version: str) -> None:
    # libcni >= 1.2 drops an empty "dns" from 1.x results (types100 MarshalJSON).
    assert result_to_json(Result(), version) == {"cniVersion": version}


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_v1_partial_dns_keeps_only_set_fields(version: str) -> None:
    r = Result(dns=DNS(search=["a.example"]))
    assert result_to_json(r, version) == {"cniVersion": version, "dns": {"search": ["a.example"]}}


# --------------------------------------------------------------------------- 1.0.0


def test_v100_drops_the_110_fields() -> None:
    out = result_to_json(full_result(), "1.0.0")
    assert out["cniVersion"] == "1.0.0"
    assert out["interfaces"] == [
        {"name": "cni0", "mac": "0a:58:0a:f4:01:01"},
        {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/var/run/netns/pod"},
    ]
    assert out["ips"] == result_to_json(full_result(), "1.1.0")["ips"]
    assert out["routes"] == [
        {"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
        {"dst": "::/0", "gw": "fd00::1"},
        {"dst": "192.168.0.0/16"},
    ]
    assert out["dns"]["nameservers"] == ["10.96.0.10"]


# --------------------------------------------------------------------------- 0.3.x / 0.4.0


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_v03_v04_shape(version: str) -> None:
    out = result_to_json(full_result(), version)
    assert list(out) == ["cniVersion", "interfaces", "ips", "routes", "dns"]
    assert out["cniVersion"] == version
    assert out["interfaces"] == result_to_json(full_result(), "1.0.0")["interfaces"]
    assert out["ips"] == [
        {"version": "4", "interface": 1, "address": "10.244.1.5/24", "gateway": "10.244.1.1"},
        {"version": "6", "interface": 1, "address": "fd00::5/64", "gateway": "fd00::1"},
        {"version": "4", "interface": 0, "address": "10.245.0.9/16"},
        {"version": "6", "address": "fd01::9/64"},
    ]
    assert out["routes"] == result_to_json(full_result(), "1.0.0")["routes"]
    assert out["dns"] == result_to_json(full_result(), "1.0.0")["dns"]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_v03_v04_empty_dns_is_written(version: str) -> None:
    # types040 has no MarshalJSON fix-up: a struct field is never omitted by Go.
    assert result_to_json(Result(), version) == {"cniVersion": version, "dns": {}}


# --------------------------------------------------------------------------- 0.1.0 / 0.2.0


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_legacy_shape_first_address_of_each_family(version: str) -> None:
    out = result_to_json(full_result(), version)
    assert out == {
        "cniVersion": version,
        "ip4": {
            "ip": "10.244.1.5/24",
            "gateway": "10.244.1.1",
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "192.168.0.0/16"}],
        },
        "ip6": {
            "ip": "fd00::5/64",
            "gateway": "fd00::1",
            "routes": [{"dst": "::/0", "gw": "fd00::1"}],
        },
        "dns": {
            "nameservers": ["10.96.0.10"],
            "domain": "cluster.local",
            "search": ["svc.cluster.local"],
            "options": ["ndots:5"],
        },
    }


def test_legacy_single_family_drops_routes_of_the_other_family() -> None:
    r = Result(
        ips=[IPConfig(ip_interface("fd00::5/64"))],
        routes=[Route(ip_network("0.0.0.0/0")), Route(ip_network("fd02::/64"))],
    )
    assert result_to_json(r, "0.2.0") == {
        "cniVersion": "0.2.0",
        "ip6": {"ip": "fd00::5/64", "routes": [{"dst": "fd02::/64"}]},
        "dns": {},
    }


def test_legacy_section_without_routes_or_gateway_is_bare() -> None:
    r = Result(ips=[IPConfig(ip_interface("10.0.0.2/8"))])
    assert result_to_json(r, "0.1.0") == {
        "cniVersion": "0.1.0",
        "ip4": {"ip": "10.0.0.2/8"},
        "dns": {},
    }


def test_legacy_cannot_express_a_result_without_addresses() -> None:
    r = Result(interfaces=[Interface(name="eth0")])
    with pytest.raises(CniError) as exc:
        result_to_json(r, "0.2.0")
    assert exc.value.code == Code.INCOMPATIBLE_VERSION
    assert "0.2.0" in exc.value.msg


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", ["", "1.2.0", "0.5.0", "1.1", "latest"])
def test_unknown_version_is_error_1(version: str) -> None:
    with pytest.raises(CniError) as exc:
        result_to_json(full_result(), version)
    assert exc.value.code == Code.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_version_output_is_plain_json(version: str) -> None:
    out = result_to_json(full_result(), version)
    assert json.loads(json.dumps(out)) == out
    assert result_from_json(out).cni_version == version


# --------------------------------------------------------------------------- decoding


def test_decode_v110_full() -> None:
    assert result_from_json(result_to_json(full_result(), "1.1.0")) == Result(
        **{**full_result().__dict__, "cni_version": "1.1.0"}
    )


def test_decode_reads_110_fields_even_when_labelled_100() -> None:
    # The Go types are shared by 1.0 and 1.1, so a Go plugin may write them at 1.0.0.
    obj = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mtu": 9000, "socketPath": "/s", "pciID": "p"}],
        "routes": [{"dst": "10.0.0.0/8", "table": 5}],
    }
    r = result_from_json(obj)
    assert r.interfaces[0].mtu == 9000
    assert r.interfaces[0].socket_path == "/s"
    assert r.interfaces[0].pci_id == "p"
    assert r.routes[0].table == 5


def test_decode_legacy() -> None:
    obj = {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.1.2.3/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
        "ip6": {"ip": "2001:db8::3/64", "routes": [{"dst": "::/0", "gw": "2001:db8::1"}]},
        "dns": {"nameservers": ["10.1.0.1"]},
    }
    assert result_from_json(obj) == Result(
        cni_version="0.2.0",
        ips=[
            IPConfig(ip_interface("10.1.2.3/16"), ip_address("10.1.0.1")),
            IPConfig(ip_interface("2001:db8::3/64")),
        ],
        routes=[
            Route(ip_network("0.0.0.0/0")),
            Route(ip_network("::/0"), ip_address("2001:db8::1")),
        ],
        dns=DNS(nameservers=["10.1.0.1"]),
    )


def test_decode_keeps_host_bits_of_addresses() -> None:
    r = result_from_json({"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/16"}]})
    assert str(r.ips[0].address) == "10.1.2.3/16"


def test_decode_masks_host_bits_of_route_destinations() -> None:
    r = result_from_json({"cniVersion": "1.0.0", "routes": [{"dst": "10.1.2.3/16"}]})
    assert r.routes[0].dst == ip_network("10.1.0.0/16")


def test_decode_nulls_and_unknown_keys_are_ignored() -> None:
    obj = {
        "cniVersion": "1.1.0",
        "interfaces": None,
        "ips": [{"address": "10.0.0.1/8", "gateway": None, "interface": None, "extra": 1}],
        "routes": None,
        "dns": {"nameservers": None, "domain": None},
        "somethingNew": {"x": 1},
    }
    assert result_from_json(obj) == Result(ips=[IPConfig(ip_interface("10.0.0.1/8"))])


def test_decode_zero_mtu_reads_as_unset() -> None:
    obj = {"cniVersion": "1.1.0", "interfaces": [{"name": "e", "mtu": 0}]}
    assert result_from_json(obj).interfaces[0].mtu is None


def test_decode_ips_without_version_in_040_accepted() -> None:
    r = result_from_json({"cniVersion": "0.4.0", "ips": [{"address": "fd00::1/64"}]})
    assert r.ips[0].address == ip_interface("fd00::1/64")


def test_default_version_fills_a_missing_cniversion() -> None:
    obj = {"ips": [{"address": "10.0.0.4/24"}]}
    assert result_from_json(obj, default_version="1.0.0").cni_version == "1.0.0"
    assert result_from_json({**obj, "cniVersion": ""}, "0.4.0").cni_version == "0.4.0"
    assert result_from_json({**obj, "cniVersion": "1.1.0"}, "0.4.0").cni_version == "1.1.0"


def decode_error(obj: Any) -> CniError:
    with pytest.raises(CniError) as exc:
        result_from_json(obj)
    return exc.value


V1 = {"cniVersion": "1.0.0"}


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ([], "result"),
        ("x", "result"),
        ({}, "cniVersion"),
        ({"cniVersion": 1}, "cniVersion"),
        ({**V1, "interfaces": {}}, "interfaces"),
        ({**V1, "interfaces": ["eth0"]}, "interfaces[0]"),
        ({**V1, "interfaces": [{}]}, "interfaces[0].name"),
        ({**V1, "interfaces": [{"name": 5}]}, "interfaces[0].name"),
        ({**V1, "interfaces": [{"name": "e", "mac": 5}]}, "interfaces[0].mac"),
        ({**V1, "interfaces": [{"name": "e", "mtu": "1500"}]}, "interfaces[0].mtu"),
        ({**V1, "interfaces": [{"name": "e", "mtu": -1}]}, "interfaces[0].mtu"),
        ({**V1, "interfaces": [{"name": "e", "mtu": True}]}, "interfaces[0].mtu"),
        ({**V1, "interfaces": [{"name": "e", "mtu": 1500.5}]}, "interfaces[0].mtu"),
        ({**V1, "ips": "10.0.0.1/8"}, "ips"),
        ({**V1, "ips": [{}]}, "ips[0].address"),
        ({**V1, "ips": [{"address": 10}]}, "ips[0].address"),
        ({**V1, "ips": [{"address": "10.0.0.1"}]}, "ips[0].address"),
        ({**V1, "ips": [{"address": "10.0.0.1/33"}]}, "ips[0].address"),
        ({**V1, "ips": [{"address": "10.0.0.1/255.0.0.0"}]}, "ips[0].address"),
        ({**V1, "ips": [{"address": "10.0.0.256/8"}]}, "ips[0].address"),
        ({**V1, "ips": [{"address": "fe80::1%eth0/64"}]}, "ips[0].address"),
        ({**V1, "ips": [{"address": "garbage/8"}]}, "ips[0].address"),
        ({**V1, "ips": [{"address": "10.0.0.1/8", "gateway": "x"}]}, "ips[0].gateway"),
        ({**V1, "ips": [{"address": "10.0.0.1/8", "gateway": 7}]}, "ips[0].gateway"),
        ({**V1, "ips": [{"address": "10.0.0.1/8", "gateway": "fe80::1%e"}]}, "ips[0].gateway"),
        ({**V1, "ips": [{"address": "10.0.0.1/8", "interface": "0"}]}, "ips[0].interface"),
        ({**V1, "routes": [{}]}, "routes[0].dst"),
        ({**V1, "routes": [{"dst": "10.0.0.0"}]}, "routes[0].dst"),
        ({**V1, "routes": [{"dst": "0.0.0.0/0", "gw": "nope"}]}, "routes[0].gw"),
        ({**V1, "routes": [{"dst": "0.0.0.0/0", "table": "main"}]}, "routes[0].table"),
        ({**V1, "routes": [{"dst": "0.0.0.0/0", "priority": -5}]}, "routes[0].priority"),
        ({**V1, "dns": []}, "dns"),
        ({**V1, "dns": {"nameservers": "10.0.0.1"}}, "dns.nameservers"),
        ({**V1, "dns": {"search": [1]}}, "dns.search[0]"),
        ({**V1, "dns": {"domain": ["a"]}}, "dns.domain"),
        ({**V1, "dns": {"options": {}}}, "dns.options"),
        (
            {"cniVersion": "0.4.0", "ips": [{"address": "10.0.0.1/8", "version": 4}]},
            "ips[0].version",
        ),
        ({"cniVersion": "0.2.0", "ip4": "10.0.0.1/8"}, "ip4"),
        ({"cniVersion": "0.2.0", "ip4": {}}, "ip4.ip"),
        ({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1"}}, "ip4.ip"),
        ({"cniVersion": "0.2.0", "ip6": {"ip": "fd00::1/64", "gateway": 1}}, "ip6.gateway"),
        ({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/8", "routes": {}}}, "ip4.routes"),
        ({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/8", "routes": [{}]}}, "ip4.routes[0].dst"),
    ],
)
def test_malformed_is_decode_failure_naming_the_field(obj: Any, field: str) -> None:
    err = decode_error(obj)
    assert err.code == Code.DECODE_FAILURE
    assert f"{field}:" in err.msg


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({**V1, "ips": [{"address": "10.0.0.1/8", "interface": 0}]}, "ips[0].interface"),
        (
            {
                **V1,
                "interfaces": [{"name": "a"}],
                "ips": [{"address": "10.0.0.1/8", "interface": 1}],
            },
            "ips[0].interface",
        ),
        (
            {
                **V1,
                "interfaces": [{"name": "a"}],
                "ips": [{"address": "10.0.0.1/8", "interface": -1}],
            },
            "ips[0].interface",
        ),
        (
            {"cniVersion": "0.3.1", "ips": [{"address": "10.0.0.1/8", "version": "6"}]},
            "ips[0].version",
        ),
        ({"cniVersion": "0.2.0", "ip4": {"ip": "fd00::1/64"}}, "ip4.ip"),
        ({"cniVersion": "0.2.0", "ip6": {"ip": "10.0.0.1/8"}}, "ip6.ip"),
    ],
)
def test_inconsistent_is_invalid_config_naming_the_field(obj: Any, field: str) -> None:
    err = decode_error(obj)
    assert err.code == Code.INVALID_CONFIG
    assert f"{field}:" in err.msg


@pytest.mark.parametrize("version", ["1.2.0", "0.5.0", "2.0.0", "1.0"])
def test_decode_unsupported_version_is_error_1(version: str) -> None:
    err = decode_error({"cniVersion": version})
    assert err.code == Code.INCOMPATIBLE_VERSION
    assert version in err.msg
