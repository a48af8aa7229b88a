"""DEL through the agent answers before the kernel has deleted the veth; everything of the
attachment is still gone within a moment, and nothing that follows collides with it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from loxicni.plugin.naming import attachment_key

from .conftest import Net, host_links, links_of_bridge

GONE_WITHIN = 0.2  # seconds after DEL's answer


def _state_left(net: Net, container_id: str, host_veth: str, conf_name: str) -> list[str]:
    key = attachment_key(conf_name, container_id, "eth0")
    state = Path(os.environ.get("LOXI_CNI_STATE_DIR", "/var/lib/loxi-cni"))
    run = Path(os.environ.get("LOXI_CNI_RUN_DIR", "/run/loxi-cni"))
    left = []
    if host_veth in host_links():
        left.append(f"veth {host_veth}")
    if (state / "attachments" / f"{key}.json").exists():
        left.append("record")
    if (run / "locks" / key).exists():
        left.append("lock")
    if net.reservations():
        left.append(f"reservations {net.reservations()}")
    return left


def _within(seconds: float, probe: Callable[[], list[str]]) -> list[str]:
    deadline = time.monotonic() + seconds
    left = probe()
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = probe()
    return left


def test_del_leaves_nothing_within_moments(net: Net, mode: str) -> None:
    conf = net.conf()
    pod = net.pod()
    added = net.call("ADD", pod, conf)
    assert added.rc == 0, added.stdout
    host_veth = added.json["interfaces"][1]["name"]
    res = net.call("DEL", pod, conf)
    assert res.rc == 0, res.stdout
    answered = time.monotonic()
    # Answered: the address is free and the veth already out of the bridge at once.
    assert net.reservations() == {}
    assert host_veth not in links_of_bridge(net.bridge)
    if mode == "standalone":
        assert _state_left(net, pod.container_id, host_veth, net.name) == []
        return
    left = _within(GONE_WITHIN, lambda: _state_left(net, pod.container_id, host_veth, net.name))
    assert left == [], f"{left} still there {time.monotonic() - answered:.3f} s after DEL"


def test_add_right_after_del_waits_for_the_deletion(net: Net) -> None:
    """The same attachment again, and another attachment with the same ifname in the same
    netns, each ADDed the moment DEL answered: both succeed, none fails on the old veth."""
    conf = net.conf()
    pod = net.pod()
    for round_ in range(5):
        first = net.call("ADD", pod, conf)
        assert first.rc == 0, (round_, first.stdout)
        assert net.call("DEL", pod, conf).rc == 0
        other = net.call("ADD", pod, conf, container_id=f"other{round_}")
        assert other.rc == 0, (round_, other.stdout)
        assert net.call("DEL", pod, conf, container_id=f"other{round_}").rc == 0
    again = net.call("ADD", pod, conf)
    assert again.rc == 0 and len(net.reservations()) == 1
    assert net.call("DEL", pod, conf).rc == 0


def test_sync_teardown_answers_after_the_veth_is_gone(net: Net) -> None:
    conf = net.conf(syncTeardown=True)
    pod = net.pod()
    added = net.call("ADD", pod, conf)
    assert added.rc == 0, added.stdout
    host_veth = added.json["interfaces"][1]["name"]
    assert net.call("DEL", pod, conf).rc == 0
    assert _state_left(net, pod.container_id, host_veth, net.name) == []
