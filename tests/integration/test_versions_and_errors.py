"""Every CNI version's result shape, and every error path with its code, through the executable."""

from __future__ import annotations

import json

import pytest

from tests.support.confs import design_notes_conf

from .conftest import Net, host_links, links_of_bridge, run_plugin

VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.parametrize("version", VERSIONS)
def test_result_shape_per_version(net: Net, version: str) -> None:
    pod = net.pod()
    conf = net.conf(version, ipam={"routes": [{"dst": "10.0.0.0/8"}]})
    res = net.call("ADD", pod, conf)
    assert res.rc == 0, res.stdout + res.stderr
    out = res.json
    assert out["cniVersion"] == version
    if version in ("0.1.0", "0.2.0"):
        assert set(out) <= {"cniVersion", "ip4", "ip6", "dns"}
        assert out["ip4"] == {
            "ip": "10.99.0.2/24",
            "gateway": "10.99.0.1",
            "routes": [{"dst": "10.0.0.0/8"}],
        }
    else:
        assert out["interfaces"][0]["name"] == net.bridge
        ip = out["ips"][0]
        assert ip["address"] == "10.99.0.2/24" and ip["interface"] == 2
        assert ("version" in ip) == version.startswith("0."), ip
        if "version" in ip:
            assert ip["version"] == "4"
    assert net.call("DEL", pod, conf).rc == 0
    assert net.reservations() == {}


def test_version_command() -> None:
    res = run_plugin("VERSION", {"cniVersion": "1.0.0"})
    assert res.rc == 0
    assert res.json == {"cniVersion": "1.1.0", "supportedVersions": VERSIONS}


def test_design_notes_config_fails_clearly_on_this_kernel(net: Net) -> None:
    """The DEVELOPERS.md config (vlanID 100) asks for VLAN filtering, which this kernel lacks."""
    pod = net.pod()
    conf = design_notes_conf(net.name, net.bridge, dataDir=str(net.data_dir))
    res = net.call("ADD", pod, conf)
    assert res.rc != 0
    err = res.json
    assert err["cniVersion"] == "0.2.0"
    assert err["code"] == 100
    assert "VLAN" in err["msg"] and "kernel" in err["msg"]
    assert net.bridge not in host_links()
    assert net.reservations() == {}
    with pod.ipr() as ns:
        assert not ns.link_lookup(ifname="eth0")


ENV_CASES = [
    ({"CNI_COMMAND": "BOGUS"}, 4),
    ({"CNI_CONTAINERID": ""}, 4),
    ({"CNI_CONTAINERID": "-bad"}, 4),
    ({"CNI_IFNAME": "a/b"}, 4),
    ({"CNI_IFNAME": "x" * 16}, 4),
    ({"CNI_NETNS": "/nonexistent/netns"}, 3),
    ({"CNI_NETNS": "/etc/hostname"}, 4),
]


@pytest.mark.parametrize(("env", "code"), ENV_CASES)
def test_bad_env(net: Net, env: dict[str, str], code: int) -> None:
    pod = net.pod()
    environ = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": pod.path,
        "CNI_IFNAME": "eth0",
    }
    environ.update(env)
    res = run_plugin(environ.pop("CNI_COMMAND"), net.conf(), env=environ)
    assert res.rc != 0
    assert res.json["code"] == code, res.stdout
    assert "Traceback" not in res.stdout
    assert net.reservations() == {}
    assert links_of_bridge(net.bridge) == []


def _bad(net: Net, **fields: object) -> dict[str, object]:
    conf = net.conf()
    for key, value in fields.items():
        if key == "ipam":
            conf["ipam"] = {**conf["ipam"], **value}  # type: ignore[dict-item]
        else:
            conf[key] = value
    return conf


CONFIG_CASES = [
    ("bad subnet", {"ipam": {"subnet": "10.0.0.0/33"}}, 7),
    ("mtu not a number", {"mtu": "1500"}, 7),
    ("mtu too small", {"mtu": 10}, 7),
    ("hairpin with promisc", {"hairpinMode": True, "promiscMode": True}, 7),
    ("vlan out of range", {"vlan": 5000}, 7),
    ("bad mac", {"mac": "zz:00:00:00:00:00"}, 7),
    ("bad bridge name", {"bridge": "has space"}, 7),
    ("no name", {"name": ""}, 7),
    ("veth prefix too long", {"vethPrefix": "abcdefghijk"}, 7),
    ("unsupported version", {"cniVersion": "9.9.9"}, 1),
    ("missing ipam", {"ipam": {"type": ""}}, 7),
]


@pytest.mark.parametrize(("why", "fields", "code"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(net: Net, why: str, fields: dict[str, object], code: int) -> None:
    pod = net.pod()
    res = net.call("ADD", pod, _bad(net, **fields))
    assert res.rc != 0, why
    assert res.json["code"] == code, res.stdout
    assert net.reservations() == {}
    assert links_of_bridge(net.bridge) == []
    with pod.ipr() as ns:
        assert not ns.link_lookup(ifname="eth0")


def test_undecodable_stdin(net: Net) -> None:
    pod = net.pod()
    res = run_plugin("ADD", b"{not json", container_id=pod.container_id, netns=pod.path)
    assert res.rc != 0 and res.json["code"] == 6
    assert "Traceback" not in res.stdout


def test_unknown_cni_args_need_ignore_unknown(net: Net) -> None:
    pod = net.pod()
    conf = net.conf()
    res = net.call("ADD", pod, conf, args="FOO=bar")
    assert res.rc != 0 and res.json["code"] == 4
    ok = net.call("ADD", pod, conf, args="IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=web")
    assert ok.rc == 0, ok.stdout
    assert net.call("DEL", pod, conf, args="IgnoreUnknown=1;FOO=bar").rc == 0


def test_check_gc_status_refused_for_old_versions(net: Net) -> None:
    pod = net.pod()
    res = net.call("CHECK", pod, net.conf("0.3.1"))
    assert res.rc != 0 and res.json["code"] == 1
    res = run_plugin("GC", net.conf("1.0.0"))
    assert res.rc != 0 and res.json["code"] == 1
    res = run_plugin("STATUS", net.conf("1.0.0"))
    assert res.rc != 0 and res.json["code"] == 1


def test_error_output_is_json_only(net: Net) -> None:
    pod = net.pod()
    res = net.call("ADD", pod, _bad(net, mtu="x"))
    json.loads(res.stdout)  # nothing but the JSON error on stdout
