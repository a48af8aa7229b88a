"""GC against ADDs it cannot know of: the runtime's list of valid attachments is older than
any ADD that finishes while GC runs, so GC keeps what was written after it started."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loxicni.plugin.locks import attachment_lock, lock_path
from tests.integration.conftest import (
    Net,
    Pod,
    holding_store_lock,
    links_of_bridge,
    run_plugin,
    store_lock,
)
from tests.support.host import flock_waited_on
from tests.support.waiting import wait_for


def gc_conf(conf: dict[str, Any], *valid: Pod) -> dict[str, Any]:
    listed = [{"containerID": p.container_id, "ifname": "eth0"} for p in valid]
    return {**conf, "cni.dev/valid-attachments": listed}


def test_an_add_that_finishes_while_gc_waits_for_it_is_kept(net: Net) -> None:
    conf = net.conf()
    listed, late = net.pod(), net.pod()
    assert net.call("ADD", listed, conf).rc == 0
    with ThreadPoolExecutor(2) as pool:
        with holding_store_lock(net):
            adding = pool.submit(net.call, "ADD", late, conf)
            wait_for("the ADD to wait for the store", lambda: flock_waited_on(store_lock(net)))
            # GC starts with a list taken before this ADD: it waits for the attachment's lock.
            gc = pool.submit(run_plugin, "GC", gc_conf(conf, listed))
            late_lock = lock_path(net.name, late.container_id, "eth0")
            wait_for("GC to wait for the attachment", lambda: flock_waited_on(late_lock))
        added = adding.result(timeout=60)
        collected = gc.result(timeout=60)
    assert added.rc == 0, added.stdout
    assert collected.rc == 0, collected.stdout

    late_veth = added.json["interfaces"][1]["name"]
    assert late_veth in links_of_bridge(net.bridge)
    assert f"{late.container_id}\r\neth0" in net.reservations().values()
    peer = added.json["ips"][0]["address"].split("/")[0]
    assert listed.sh("ping", "-c", "1", "-W", "2", peer, check=False).returncode == 0
    for pod in (listed, late):
        assert net.call("DEL", pod, conf).rc == 0
    assert net.reservations() == {} and links_of_bridge(net.bridge) == []


def test_a_reservation_made_after_gc_started_is_kept(net: Net) -> None:
    conf = net.conf()
    listed, stale, late = net.pod(), net.pod(), net.pod()
    assert net.call("ADD", listed, conf).rc == 0
    assert net.call("ADD", stale, conf).rc == 0
    with ThreadPoolExecutor(1) as pool:
        with attachment_lock(net.name, stale.container_id, "eth0"):
            gc = pool.submit(run_plugin, "GC", gc_conf(conf, listed))
            stale_lock = lock_path(net.name, stale.container_id, "eth0")
            wait_for("GC to wait for the attachment", lambda: flock_waited_on(stale_lock))
            # An ADD GC has never seen runs from start to end while GC waits.
            added = net.call("ADD", late, conf)
            assert added.rc == 0, added.stdout
        collected = gc.result(timeout=60)
    assert collected.rc == 0, collected.stdout

    # The stale attachment is gone; the one added while GC ran is whole.
    assert added.json["interfaces"][1]["name"] in links_of_bridge(net.bridge)
    assert len(links_of_bridge(net.bridge)) == 2
    assert sorted(net.reservations().values()) == sorted(
        f"{p.container_id}\r\neth0" for p in (listed, late)
    )
    peer = added.json["ips"][0]["address"].split("/")[0]
    assert listed.sh("ping", "-c", "1", "-W", "2", peer, check=False).returncode == 0
    for pod in (listed, late, stale):
        assert net.call("DEL", pod, conf).rc == 0
    assert net.reservations() == {} and links_of_bridge(net.bridge) == []
