"""CHECK passes on what ADD built and names what differs after tampering."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from loxicni.plugin import naming
from loxicni.plugin.config import DEFAULT_VETH_PREFIX

from .conftest import Net, Pod, links_of_bridge


def _added(net: Net) -> tuple[Pod, dict[str, Any]]:
    pod = net.pod()
    conf = net.conf(ipam={"routes": [{"dst": "10.0.0.0/8"}]})
    res = net.call("ADD", pod, conf)
    assert res.rc == 0, res.stdout
    return pod, {**conf, "prevResult": res.json}


def test_check_passes_on_fresh_attachment(net: Net) -> None:
    pod, conf = _added(net)
    res = net.call("CHECK", pod, conf)
    assert res.rc == 0 and res.stdout == "", res.stdout
    assert net.call("DEL", pod, conf).rc == 0


def test_check_needs_prev_result(net: Net) -> None:
    pod, conf = _added(net)
    del conf["prevResult"]
    res = net.call("CHECK", pod, conf)
    assert res.rc != 0 and res.json["code"] == 7


def _ns(pod: Pod, *cmd: str) -> None:
    subprocess.run(["ip", "-n", pod.name, *cmd], check=True)


TAMPERING: list[tuple[str, Callable[[Pod, dict[str, Any], Net], None], str]] = [
    ("address removed", lambda p, c, n: _ns(p, "addr", "flush", "dev", "eth0"), "address"),
    (
        "mac changed",
        lambda p, c, n: _ns(p, "link", "set", "eth0", "address", "02:00:00:00:00:42"),
        "MAC",
    ),
    ("route removed", lambda p, c, n: _ns(p, "route", "del", "10.0.0.0/8"), "route"),
    (
        "veth detached",
        lambda p, c, n: subprocess.run(
            ["ip", "link", "set", c["prevResult"]["interfaces"][1]["name"], "nomaster"], check=True
        ),
        "bridge",
    ),
    ("mtu changed", lambda p, c, n: _ns(p, "link", "set", "eth0", "mtu", "1300"), "MTU"),
    ("interface deleted", lambda p, c, n: _ns(p, "link", "del", "eth0"), "missing"),
    (
        "reservation removed",
        lambda p, c, n: [
            f.unlink() for f in (n.data_dir / n.name).iterdir() if f.name.startswith("10.")
        ],
        "allocated",
    ),
]


@pytest.mark.parametrize(("why", "tamper", "word"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_check_detects_tampering(
    net: Net, why: str, tamper: Callable[[Pod, dict[str, Any], Net], None], word: str
) -> None:
    pod, conf = _added(net)
    tamper(pod, conf, net)
    res = net.call("CHECK", pod, conf)
    assert res.rc != 0, why
    assert word.lower() in res.json["msg"].lower(), res.json
    assert net.call("DEL", pod, conf).rc == 0


def test_check_finds_a_host_veth_past_a_free_candidate_name(net: Net) -> None:
    """The first host veth name was taken when ADD ran (so it got the second); its holder has
    gone since. CHECK must still look at every candidate."""
    pod = net.pod()
    taken = naming.candidates(DEFAULT_VETH_PREFIX, net.name, pod.container_id, "eth0")[0]
    subprocess.run(["ip", "link", "add", taken, "type", "bridge"], check=True)
    try:
        conf = net.conf()
        added = net.call("ADD", pod, conf)
        assert added.rc == 0, added.stdout
    finally:
        subprocess.run(["ip", "link", "del", taken], capture_output=True)
    assert added.json["interfaces"][1]["name"] != taken
    res = net.call("CHECK", pod, {**conf, "prevResult": added.json})
    assert res.rc == 0 and res.stdout == "", res.stdout
    assert net.call("DEL", pod, conf).rc == 0
    assert links_of_bridge(net.bridge) == []
