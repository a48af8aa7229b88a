"""The node agent and the thin client: forwarding, status, metrics, hostile input, crashes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.agent.harness import Agent
from tests.integration.conftest import Call, Net, holding_store_lock, links_of_bridge, run_plugin
from tests.support.plugin import PLUGIN, agent_status
from tests.support.waiting import wait_for


def test_requests_are_served_by_the_agent(agent: Agent, net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    before = agent.status()
    assert before["requestsServed"] == 0 and before["attachments"] == 0
    assert net.call("ADD", pod, conf, env=agent.env).rc == 0
    during = agent.status()
    assert during["requestsServed"] == 1
    assert during["attachments"] == 1
    assert during["addressesInUse"] == {net.name: 1}
    assert net.call("DEL", pod, conf, env=agent.env).rc == 0
    # Answered: the pod holds nothing any more, though its retired veth may still be going.
    after = agent.status()
    assert after["requestsServed"] == 2 and after["attachments"] == 0
    assert after["addressesInUse"] == {} and after["deletionsPending"] in (0, 1)
    wait_for("the deletion to finish", lambda: agent.status()["deletionsPending"] == 0)
    assert "loxi_cni_attachments 0" in agent.metrics()
    assert "loxi_cni_deletions_pending 0" in agent.metrics()
    assert os.stat(agent.socket).st_mode & 0o777 == 0o600


def test_metrics(agent: Agent, net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    assert net.call("ADD", pod, conf, env=agent.env).rc == 0
    assert net.call("ADD", net.pod(), {**conf, "mtu": "x"}, env=agent.env).rc != 0
    text = agent.metrics()
    assert 'loxi_cni_requests_total{command="ADD"} 2' in text
    assert 'loxi_cni_errors_total{command="ADD",code="7"} 1' in text
    assert 'loxi_cni_request_seconds_count{command="ADD"} 2' in text
    assert 'loxi_cni_request_seconds_bucket{command="ADD",le="+Inf"} 2' in text
    assert "loxi_cni_attachments 1" in text
    labels = f'network="{net.name}",range="10.99.0.1-10.99.0.254"'
    assert f"loxi_cni_addresses_in_use{{{labels}}} 1" in text
    assert f"loxi_cni_addresses_free{{{labels}}} 252" in text
    assert net.call("DEL", pod, conf, env=agent.env).rc == 0


def _raw(agent: Agent, payload: bytes, *, close_early: bool = False) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(agent.socket)
        s.sendall(payload)
        if close_early:
            return b""
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def _error_code(reply: bytes) -> int:
    assert reply[:4] == b"LXR1"
    exit_code, length = struct.unpack(">II", reply[4:12])
    assert exit_code == 1
    return int(json.loads(reply[12 : 12 + length])["code"])


def test_hostile_requests_leave_the_agent_serving(agent: Agent, net: Net) -> None:
    assert _error_code(_raw(agent, b"GET / HTTP/1.0\r\n\r\n")) == 6
    assert _error_code(_raw(agent, b"LXC1" + struct.pack(">I", 1 << 30))) == 4
    env = b"CNI_COMMAND=ADD"
    too_big = b"LXC1" + struct.pack(">I", len(env)) + env + struct.pack(">I", 64 << 20)
    assert _error_code(_raw(agent, too_big)) == 6
    _raw(agent, b"LXC1" + struct.pack(">I", 100) + b"CNI_COMM", close_early=True)
    assert _error_code(_raw(agent, b"LXC1" + struct.pack(">I", 3) + b"abc" + b"\0\0\0\0")) == 4
    pod = net.pod()
    assert net.call("ADD", pod, net.conf(), env=agent.env).rc == 0
    assert net.call("DEL", pod, net.conf(), env=agent.env).rc == 0
    assert agent.proc is not None and agent.proc.poll() is None


def test_non_root_peers_are_refused(agent: Agent) -> None:
    """Mode 0600 keeps others out; were it opened up, the peer-credential check still does."""
    public = Path(tempfile.mkdtemp(prefix="loxi-agent-test-"))
    try:
        public.chmod(0o755)
        link = public / "agent.sock"
        os.link(agent.socket, link)  # the same socket, reachable by an unprivileged user
        probe = (
            "import os, socket, struct\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(10)\n"
            "try:\n"
            f"    s.connect({str(link)!r})\n"
            "except PermissionError:\n"
            "    print('EACCES'); raise SystemExit\n"
            "s.sendall(b'LXC1' + struct.pack('>I', 0) + struct.pack('>I', 0))\n"
            "print(s.recv(65536)[12:].decode())\n"
        )

        def as_nobody() -> str:
            proc = subprocess.run(
                ["/usr/bin/python3", "-c", probe], capture_output=True, text=True, timeout=20
            )
            assert proc.returncode == 0, proc.stderr
            return proc.stdout.strip()

        assert as_nobody() == "EACCES"
        os.chmod(agent.socket, 0o666)
        err = json.loads(as_nobody())
        assert err["code"] == 4 and "root" in err["msg"]
        assert agent.status()["agent"] == "up"
    finally:
        shutil.rmtree(public)


def test_thin_client_imports_only_the_standard_library() -> None:
    """Python's plugin mode (run directly, without the compiled shim) and `loxi-cni status`."""
    repo = Path(__file__).resolve().parents[2]
    code = (
        f"import sys; sys.path.insert(0, {str(repo)!r})\n"
        "import loxicni.main, loxicni.client\n"
        "heavy = [m for m in ('pyroute2', 'json', 'socket', 'asyncio', 'loxicni.plugin')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_crash_mid_add_and_dead_netns_are_reconciled(agent: Agent, net: Net) -> None:
    conf = net.conf()
    a, b, c, d = (net.pod() for _ in range(4))
    results = {p.name: net.call("ADD", p, conf, env=agent.env) for p in (a, b, c)}
    assert all(r.rc == 0 for r in results.values())

    # d's ADD blocks inside the agent on the IPAM store lock; then the agent is killed.
    with holding_store_lock(net), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(net.call, "ADD", d, conf, env={**agent.env, "LOXI_CNI_TIMEOUT": "30"})
        deadline = time.monotonic() + 10
        while not d.ipr().link_lookup(ifname="eth0") and time.monotonic() < deadline:
            time.sleep(0.05)
        agent.kill9()
        lost = pending.result(timeout=30)
    assert lost.rc != 0 and lost.json["code"] == 11, lost.stdout

    subprocess.run(["ip", "netns", "del", b.name], check=True)  # b's pod dies without a DEL
    agent.start()
    log = agent.log.read_text()
    assert re.search(r"reconciled: kept 2, released 2, orphan veths deleted 0, failed 0", log), log

    live = {
        results[a.name].json["ips"][0]["address"].split("/")[0],
        results[c.name].json["ips"][0]["address"].split("/")[0],
    }
    assert set(net.reservations()) == live
    expected = {results[p.name].json["interfaces"][1]["name"] for p in (a, c)}
    assert set(links_of_bridge(net.bridge)) == expected
    status = agent.status()
    assert status["attachments"] == 2
    for p in (a, c):
        assert net.call("DEL", p, conf, env=agent.env).rc == 0
    assert net.reservations() == {} and links_of_bridge(net.bridge) == []
    # Each record goes once its veth is deleted, after the DEL has answered.
    wait_for("no attachment", lambda: agent.status()["attachments"] == 0, timeout=10)


def test_kill_9_during_a_storm_never_hangs_and_leaks_nothing(agent: Agent, net: Net) -> None:
    conf = net.conf()
    pods = [net.pod() for _ in range(24)]
    env = {**agent.env, "LOXI_CNI_TIMEOUT": "20"}

    def cycle(pod: Any) -> list[Call]:
        return [
            net.call("ADD", pod, conf, env=env),
            net.call("DEL", pod, conf, env=env),
            net.call("ADD", pod, conf, env=env),
        ]

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cycle, p) for p in pods]
        time.sleep(0.4)
        agent.kill9()
        calls = [f.result(timeout=120) for f in futures]  # bounded: no client hangs
    for call in (c for cs in calls for c in cs):
        # served by the agent, lost with it (11), or run in-process once it was gone
        assert call.rc == 0 or call.json["code"] in (11, 101, 102), call.stdout

    agent.start()
    # What is left must be exactly the attachments that are alive in the kernel.
    alive = [p for p in pods if p.ipr().link_lookup(ifname="eth0")]
    status = agent.status()
    assert status["attachments"] == len(alive)
    assert len(net.reservations()) == len(alive)
    assert len(links_of_bridge(net.bridge)) == len(alive)
    for p in pods:  # the runtime's clean-up: DEL everything
        assert net.call("DEL", p, conf, env=env).rc == 0
    assert net.reservations() == {}
    assert links_of_bridge(net.bridge) == []
    # Each record goes once its veth is deleted, after the DEL has answered.
    wait_for("no attachment", lambda: agent.status()["attachments"] == 0, timeout=10)
    assert list(agent.state_dir.glob("attachments/*")) == []


def _served(agent: Agent, n: int) -> None:
    """Until the agent has answered ``n`` CNI requests (queued ones included)."""
    deadline = time.monotonic() + 20
    while agent.status()["requestsServed"] < n:
        assert time.monotonic() < deadline, agent.status()
        time.sleep(0.05)


def test_requests_their_clients_gave_up_on_are_not_run(agent: Agent, net: Net) -> None:
    """A frozen agent's clients time out (11) and the runtime goes on in-process: DEL, then
    ADD again. The agent, thawed, must not run the ADD and DEL it was sent before: the first
    would leak an attachment, the second would tear down the pod added since (found by the
    chaos run, tests/chaos, seed 6 with 1500 calls)."""
    conf = net.conf()
    ghost, live = net.pod(), net.pod()
    quick = {**agent.env, "LOXI_CNI_TIMEOUT": "1"}
    in_process = {**agent.env, "LOXI_CNI_NO_AGENT": "1"}
    assert net.call("ADD", live, conf, env=agent.env).rc == 0
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        assert net.call("ADD", ghost, conf, env=quick).json["code"] == 11
        assert net.call("DEL", ghost, conf, env=in_process).rc == 0
        assert net.call("DEL", live, conf, env=quick).json["code"] == 11
        assert net.call("DEL", live, conf, env=in_process).rc == 0
        again = net.call("ADD", live, conf, env=in_process)
        assert again.rc == 0
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    _served(agent, 3)  # the first ADD and the two requests nobody waits for any more
    address = again.json["ips"][0]["address"].split("/")[0]
    assert set(net.reservations()) == {address}  # nothing of the ghost ADD
    assert links_of_bridge(net.bridge) == [again.json["interfaces"][1]["name"]]
    assert live.sh("ip", "-o", "addr", "show", "dev", "eth0").stdout.count(address) == 1
    assert net.call("CHECK", live, {**conf, "prevResult": again.json}, env=agent.env).rc == 0
    assert net.call("DEL", live, conf, env=agent.env).rc == 0
    assert net.reservations() == {}
    # The veth is deleted after the answer; its record goes when it has.
    wait_for("the record to go", lambda: not list(agent.records_dir.iterdir()), timeout=10)


def test_fallback_without_agent_shares_state(tmp_path: Path, net: Net) -> None:
    """With no agent, the plugin runs in-process on the same records and store."""
    state = tmp_path / "state"
    env = {"LOXI_CNI_SOCKET": str(tmp_path / "none.sock"), "LOXI_CNI_STATE_DIR": str(state)}
    pod = net.pod()
    res = run_plugin("ADD", net.conf(), container_id=pod.container_id, netns=pod.path, env=env)
    assert res.rc == 0, res.stdout
    assert len(list(state.glob("attachments/*.json"))) == 1
    assert net.call("DEL", pod, net.conf(), env=env).rc == 0
    assert list(state.glob("attachments/*")) == []


def test_systemd_socket_activation(tmp_path: Path, net: Net) -> None:
    """Started as deploy/systemd's socket unit does: the listening socket is fd 3."""
    path = str(tmp_path / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    os.chmod(path, 0o600)

    env = {**os.environ, "LOXI_CNI_STATE_DIR": str(tmp_path / "state")}
    fd = listener.fileno()
    # bash's $$ becomes the agent's pid through exec, as LISTEN_PID must be (dash only
    # redirects single-digit fds).
    script = f"LISTEN_PID=$$ LISTEN_FDS=1 exec {PLUGIN} agent --socket {path} --metrics off 3<&{fd}"
    proc = subprocess.Popen(
        ["bash", "-c", script], pass_fds=(fd,), env=env, stderr=subprocess.DEVNULL
    )
    listener.close()
    try:
        pod = net.pod()
        call_env = {"LOXI_CNI_SOCKET": path, "LOXI_CNI_STATE_DIR": str(tmp_path / "state")}
        assert net.call("ADD", pod, net.conf(), env=call_env).rc == 0
        assert agent_status(path)["requestsServed"] == 1
        assert net.call("DEL", pod, net.conf(), env=call_env).rc == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert os.path.exists(path)  # the socket belongs to systemd: the agent leaves it
