"""The bridge plugin's config: defaults, every rejected value with code 7, MAC precedence."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loxicni.cni.errors import CniError, Code
from loxicni.cni.names import ifname_problem
from loxicni.plugin import naming
from loxicni.plugin.config import parse_config
from tests.support.confs import design_notes_conf


def conf(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cniVersion": "1.1.0",
        "name": "net1",
        "type": "loxi-cni",
        "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"},
    }
    base.update(fields)
    return base


def parse(cni_args: dict[str, str] | None = None, **fields: Any) -> Any:
    return parse_config(conf(**fields), "1.1.0", cni_args or {}, None)


def test_defaults() -> None:
    cfg = parse()
    assert cfg.bridge == "cni0" and cfg.veth_prefix == "loxi"
    assert not (cfg.is_gateway or cfg.is_default_gateway or cfg.ip_masq or cfg.hairpin)
    assert cfg.mtu == 0 and cfg.vlan == 0 and cfg.preserve_default_vlan and not cfg.enable_dad
    assert cfg.mac is None and cfg.ipam_type == "host-local"


def test_design_notes_config() -> None:
    cfg = parse_config(design_notes_conf(), "0.2.0", {}, None)
    assert (cfg.bridge, cfg.vlan, cfg.mtu, cfg.is_gateway) == ("hsvlan100", 100, 1500, True)


def test_default_gateway_implies_gateway() -> None:
    assert parse(isDefaultGateway=True).is_gateway


def test_vlan_trunk() -> None:
    cfg = parse(vlanTrunk=[{"id": 5}, {"minID": 10, "maxID": 12}])
    assert cfg.vlan_trunk == ((5, 5), (10, 12))


def test_mac_precedence() -> None:
    assert parse(mac="02:00:00:00:00:01").mac == "02:00:00:00:00:01"
    assert parse({"MAC": "02:00:00:00:00:02"}, mac="02:00:00:00:00:01").mac == "02:00:00:00:00:02"
    got = parse({"MAC": "02:00:00:00:00:02"}, args={"cni": {"mac": "02:00:00:00:00:03"}})
    assert got.mac == "02:00:00:00:00:03"
    got = parse(
        {"MAC": "02:00:00:00:00:02"},
        args={"cni": {"mac": "02:00:00:00:00:03"}},
        runtimeConfig={"mac": "02:00:00:00:00:04"},
    )
    assert got.mac == "02:00:00:00:00:04"


BAD = [
    {"name": ""},
    {"name": "bad name"},
    {"name": 5},
    {"bridge": "x" * 16},
    {"bridge": "a/b"},
    {"mtu": "1500"},
    {"mtu": 1.5},
    {"mtu": True},
    {"mtu": 20},
    {"mtu": 70000},
    {"isGateway": "yes"},
    {"ipMasq": 1},
    {"hairpinMode": True, "promiscMode": True},
    {"vlan": -1},
    {"vlan": 4095},
    {"vlanID": "100"},
    {"vlanTrunk": {"id": 1}},
    {"vlanTrunk": [{"id": 0}]},
    {"vlanTrunk": [{"minID": 9, "maxID": 3}]},
    {"vlanTrunk": [{}]},
    {"vlan": 3, "vlanTrunk": [{"id": 4}]},
    {"mac": "nope"},
    {"mac": "01:00:00:00:00:01"},
    {"vethPrefix": "1abc"},
    {"vethPrefix": "abcdefghi"},
    {"vethPrefix": "a b"},
    {"ipam": None},
    {"ipam": {"type": ""}},
    {"ipam": []},
    {"enabledad": "no"},
    # A trailing newline is not part of a name ("$" would have let it through).
    {"name": "net1\n"},
    {"vethPrefix": "loxi\n"},
    {"mac": "02:00:00:00:00:01\n"},
    # 15 characters but 17 bytes: the kernel counts bytes.
    {"bridge": "brücke-dörfer-1"},
    # A lone surrogate (a JSON "\\udcff" escape) is no name the kernel or a result can hold.
    {"bridge": "br\udcff"},
]


@pytest.mark.parametrize("fields", BAD, ids=[str(b) for b in BAD])
def test_bad_values_are_code_7_naming_the_field(fields: dict[str, Any]) -> None:
    with pytest.raises(CniError) as err:
        parse(**fields)
    assert err.value.code == Code.INVALID_CONFIG
    named = set(fields) - {"promiscMode"}
    assert any(key in err.value.msg for key in named), err.value.msg


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
FIELDS = [
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "forceAddress",
    "ipMasq",
    "mtu",
    "hairpinMode",
    "promiscMode",
    "vlan",
    "vlanID",
    "vlanTrunk",
    "preserveDefaultVlan",
    "mac",
    "enabledad",
    "vethPrefix",
    "ipam",
    "name",
    "runtimeConfig",
    "args",
    "logFile",
]


@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6))
def test_any_json_gives_a_config_or_a_cni_error(fields: dict[str, Any]) -> None:
    try:
        cfg = parse(**fields)
    except CniError as exc:
        assert exc.code == Code.INVALID_CONFIG
        return
    assert ifname_problem(cfg.bridge) is None
    assert 0 <= cfg.vlan <= 4094 and (cfg.mtu == 0 or 68 <= cfg.mtu <= 65535)


@given(
    st.from_regex(r"[a-zA-Z][a-zA-Z0-9_-]{0,7}", fullmatch=True),
    st.from_regex(r"[a-z0-9][a-z0-9._-]{0,30}", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}", fullmatch=True),
)
def test_veth_names_fit_and_aliases_round_trip(prefix: str, network: str, cid: str) -> None:
    names = naming.candidates(prefix, network, cid, "eth0")
    assert len(set(names)) == naming.CANDIDATES
    assert all(len(n) == 15 and n.startswith(prefix) and ifname_problem(n) is None for n in names)
    assert names == naming.candidates(prefix, network, cid, "eth0")  # found again by DEL
    assert naming.parse_alias(naming.alias(network, cid, "eth0")) == (network, cid, "eth0")
