"""The agent against attachment records it did not write: a newer version's, damaged ones,
entries that are no record at all, and the temp files of writers it cannot see."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from loxicni.base import files
from loxicni.base.files import STALE_AFTER
from loxicni.plugin.locks import attachment_lock
from loxicni.plugin.naming import attachment_key
from tests.agent.harness import Agent
from tests.integration.conftest import Net, Pod, links_of_bridge, pod_addresses, run_plugin
from tests.support.waiting import wait_for


def record_path(agent: Agent, net: Net, pod: Pod, ifname: str = "eth0") -> Path:
    return agent.records_dir / f"{attachment_key(net.name, pod.container_id, ifname)}.json"


def rewrite(path: Path, **changes: Any) -> bytes:
    doc = json.loads(path.read_bytes())
    doc.update(changes)
    data = json.dumps(doc).encode()
    path.write_bytes(data)
    return data


def ip_of(result: Any) -> str:
    return str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)


def reconciled(agent: Agent) -> str:
    lines = re.findall(r"reconciled: .*", agent.log.read_text())
    assert lines, agent.log.read_text()
    return lines[-1]


def test_records_it_cannot_read_leave_their_pods_untouched(agent: Agent, net: Net) -> None:
    conf = net.conf()
    newer, odd, plain = net.pod(), net.pod(), net.pod()
    added = {p.name: net.call("ADD", p, conf, env=agent.env) for p in (newer, odd, plain)}
    assert all(r.rc == 0 for r in added.values()), added
    reservations = net.reservations()
    veths = sorted(links_of_bridge(net.bridge))

    # A record written by a newer version: fields this one does not know.
    rewrite(record_path(agent, net, newer), schema=3, podSecurity={"profile": "x"})
    # A damaged record: a field of the wrong type.
    damaged = rewrite(record_path(agent, net, odd), mtu="1500")
    agent.restart()

    # Nothing of any of the three pods was touched: veths, reservations, addresses, traffic.
    assert sorted(links_of_bridge(net.bridge)) == veths
    assert net.reservations() == reservations
    for pod in (newer, odd, plain):
        assert added[pod.name].json["ips"][0]["address"] in pod_addresses(pod)
    for src, dst in ((newer, odd), (odd, plain), (plain, newer)):
        ping = src.sh("ping", "-c", "1", "-W", "2", ip_of(added[dst.name].json), check=False)
        assert ping.returncode == 0, ping.stdout
    assert reconciled(agent).startswith(
        "reconciled: kept 2, released 0, orphan veths deleted 0, failed 0, quarantined 1"
    )
    # The damaged record is reported, and left as it was for whoever can read it.
    status = agent.status()
    key = attachment_key(net.name, odd.container_id, "eth0")
    assert status["attachments"] == 2
    assert status["quarantined"] == [f"{key}: mtu is str"]
    assert record_path(agent, net, odd).read_bytes() == damaged
    assert "loxi_cni_quarantined_records 1" in agent.metrics()
    # An ADD of the quarantined attachment is refused, and changes nothing.
    again = net.call("ADD", odd, conf, env=agent.env)
    assert again.rc != 0 and again.json["code"] == 5, again.stdout
    assert sorted(links_of_bridge(net.bridge)) == veths

    # The runtime's DEL still removes everything.
    for pod in (newer, odd, plain):
        assert net.call("DEL", pod, conf, env=agent.env).rc == 0
    assert net.reservations() == {} and links_of_bridge(net.bridge) == []
    # The agent answers a DEL before the kernel's slow veth deletion; the record goes after it.
    wait_for("the records to go", lambda: not list(agent.records_dir.iterdir()))


def test_entries_that_are_no_record_are_reported_and_skipped(agent: Agent, net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    added = net.call("ADD", pod, conf, env=agent.env)
    assert added.rc == 0
    agent.stop()
    (agent.records_dir / "x.json").mkdir()
    (agent.records_dir / "garbage.json").write_bytes(b"\xff\xfe not json")
    (agent.records_dir / "list.json").write_text("[1, 2]")
    (agent.records_dir / "README").write_text("not a .json name: not a record either")
    agent.start()  # reconcile skips what it cannot read

    assert "quarantined 3" in reconciled(agent)
    status = agent.status()
    assert status["attachments"] == 1
    assert status["addressesInUse"] == {net.name: 1}
    assert sorted(q.split(":")[0] for q in status["quarantined"]) == ["garbage", "list", "x"]
    text = agent.metrics()
    assert "loxi_cni_attachments 1" in text and "loxi_cni_quarantined_records 3" in text
    assert added.json["ips"][0]["address"] in pod_addresses(pod)
    assert net.call("DEL", pod, conf, env=agent.env).rc == 0
    assert net.reservations() == {} and links_of_bridge(net.bridge) == []
    left = ["README", "garbage.json", "list.json", "x.json"]  # for an administrator
    wait_for("the pod's record to go", lambda: sorted(os.listdir(agent.records_dir)) == left)


def test_gc_leaves_what_it_cannot_read_alone(agent: Agent, net: Net) -> None:
    conf = net.conf()
    listed, damaged, stale = net.pod(), net.pod(), net.pod()
    added = {p.name: net.call("ADD", p, conf, env=agent.env) for p in (listed, damaged, stale)}
    assert all(r.rc == 0 for r in added.values()), added
    kept = rewrite(record_path(agent, net, damaged), mtu="1500")
    (agent.records_dir / "x.json").mkdir()
    valid = [{"containerID": listed.container_id, "ifname": "eth0"}]
    gc_conf = {**conf, "cni.dev/valid-attachments": valid}
    # GC through the agent, then in-process: both skip what they cannot read.
    for env in (agent.env, {**agent.env, "LOXI_CNI_NO_AGENT": "1"}):
        collected = run_plugin("GC", gc_conf, env=env)
        assert collected.rc == 0, collected.stdout

    # The stale attachment is gone; the damaged one is left whole, reservation included.
    survivors = (listed, damaged)
    veths = {added[p.name].json["interfaces"][1]["name"] for p in survivors}
    assert set(links_of_bridge(net.bridge)) == veths
    assert sorted(net.reservations().values()) == sorted(
        f"{p.container_id}\r\neth0" for p in survivors
    )
    assert record_path(agent, net, damaged).read_bytes() == kept
    assert not record_path(agent, net, stale).exists()
    ping = listed.sh("ping", "-c", "1", "-W", "2", ip_of(added[damaged.name].json), check=False)
    assert ping.returncode == 0, ping.stdout
    for pod in survivors:
        assert net.call("DEL", pod, conf, env=agent.env).rc == 0
    assert net.reservations() == {} and links_of_bridge(net.bridge) == []


def test_null_fields_in_a_live_record_do_not_take_status_down(agent: Agent, net: Net) -> None:
    """``status`` is the liveness probe: a record it chokes on would restart the agent in a
    loop."""
    conf = net.conf()
    pod = net.pod()
    assert net.call("ADD", pod, conf, env=agent.env).rc == 0
    rewrite(record_path(agent, net, pod), ips=None, gateways=None, mac=None)
    status = agent.status()
    assert status["agent"] == "up" and status["attachments"] == 1
    assert "loxi_cni_attachments 1" in agent.metrics()
    veths = links_of_bridge(net.bridge)
    agent.restart()
    assert reconciled(agent).startswith("reconciled: kept 1, released 0, orphan veths deleted 0")
    assert links_of_bridge(net.bridge) == veths
    assert net.call("DEL", pod, conf, env=agent.env).rc == 0
    assert net.reservations() == {} and links_of_bridge(net.bridge) == []


def test_temp_files_go_when_no_writer_can_own_them(agent: Agent, net: Net) -> None:
    """A record is saved under its attachment's lock: a temp file whose lock is free is debris,
    one whose lock is held belongs to a writer at work, whatever PID (of which PID namespace?)
    its name holds. A name that names no attachment goes by age."""
    conf = net.conf()
    pod = net.pod()
    assert net.call("ADD", pod, conf, env=agent.env).rc == 0
    at_work = attachment_key(net.name, "writing", "eth0")
    died = attachment_key(net.name, "died", "eth0")
    unseen = _unused_pid()
    temps = {
        "at work": agent.records_dir / files.temp_name(f"{at_work}.json"),
        "died": agent.records_dir / files.temp_name(f"{died}.json"),
        "fresh, no attachment": agent.records_dir / f".{died}.{unseen}.tmp",
        "old, no attachment": agent.records_dir / f".{died}.{unseen + 1}.tmp",
    }
    for path in temps.values():
        path.write_text('{"being": "written"}')
    long_ago = time.time() - STALE_AFTER - 60
    os.utime(temps["old, no attachment"], (long_ago, long_ago))
    with attachment_lock(net.name, "writing", "eth0"):  # a writer mid-save, in some namespace
        agent.restart()
    left = {what for what, path in temps.items() if path.exists()}
    assert left == {"at work", "fresh, no attachment"}
    assert agent.status()["attachments"] == 1  # none of them is taken for a record
    assert net.call("DEL", pod, conf, env=agent.env).rc == 0
    for what in left:
        temps[what].unlink()


def _unused_pid() -> int:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 2
    while os.path.exists(f"/proc/{pid}") or os.path.exists(f"/proc/{pid + 1}"):
        pid -= 2
    return pid
