"""Releasing an attachment decided on an earlier look (reconcile, the orphan release): an ADD
that replaced it in between is never torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loxicni.plugin import records
from loxicni.plugin.locks import lock_path
from loxicni.plugin.naming import attachment_key
from loxicni.plugin.release import CHANGED, RELEASED, release
from tests.integration.conftest import Net, links_of_bridge, make_net, pod_addresses


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """State and locks of this test only, shared by the exec'd plugin and this process."""
    private = {
        "LOXI_CNI_STATE_DIR": str(tmp_path / "state"),
        "LOXI_CNI_RUN_DIR": str(tmp_path / "run"),
        "LOXI_CNI_NO_AGENT": "1",
    }
    for key, value in private.items():
        monkeypatch.setenv(key, value)
    return private


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with make_net(tmp_path) as network:
        yield network


def test_release_of_a_replaced_attachment_leaves_the_new_one(env: dict[str, str], net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    key = attachment_key(net.name, pod.container_id, "eth0")
    assert net.call("ADD", pod, conf, env=env).rc == 0
    seen = records.load(key)  # the look a release is decided on
    assert seen is not None

    # Meanwhile the runtime DELs the attachment and ADDs it again (same container, ifname).
    assert net.call("DEL", pod, conf, env=env).rc == 0
    second = net.call("ADD", pod, conf, env=env)
    assert second.rc == 0

    assert release(seen).status == CHANGED
    veth = second.json["interfaces"][1]["name"]
    assert links_of_bridge(net.bridge) == [veth]
    assert list(net.reservations().values()) == [f"{pod.container_id}\r\neth0"]
    current = records.load(key)
    assert current is not None and current.generation != seen.generation
    assert second.json["ips"][0]["address"] in pod_addresses(pod)

    # Same attachment, but the caller's condition no longer holds (say, the Pod came back).
    assert release(current, still=lambda _now: False).status == CHANGED
    assert links_of_bridge(net.bridge) == [veth]

    # Still the one decided on: released, nothing of it left.
    assert release(current).status == RELEASED
    assert links_of_bridge(net.bridge) == []
    assert net.reservations() == {}
    assert records.load(key) is None
    assert not lock_path(net.name, pod.container_id, "eth0").exists()
    # Gone by now: nothing to release.
    assert release(current).status == CHANGED
