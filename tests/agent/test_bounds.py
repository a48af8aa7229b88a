"""What slow, idle or too many clients cost the agent: bounded threads and time, and the
CNI socket keeps serving whatever the metrics endpoint suffers."""

from __future__ import annotations

import select
import socket
import struct
import time
from pathlib import Path

from loxicni.agent.metrics_http import CLIENT_TIMEOUT, MAX_CLIENTS
from loxicni.agent.server import MAX_CONNECTIONS, READ_TIMEOUT, WORKERS
from tests.agent.harness import Agent, new_agent
from tests.integration.conftest import Net, holding_store_lock, links_of_bridge
from tests.support.waiting import wait_for


def closed_by_peer(conn: socket.socket) -> bool:
    """Has the other end closed ``conn`` (never blocks)?"""
    if not select.select([conn], [], [], 0)[0]:
        return False
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def count_closed(conns: list[socket.socket]) -> int:
    return sum(closed_by_peer(conn) for conn in conns)


def test_a_metrics_port_in_use_leaves_cni_served(tmp_path: Path, net: Net) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        agent = new_agent(tmp_path)
        agent.metrics_port = taken.getsockname()[1]
        agent.start()
        try:
            pod = net.pod()
            assert net.call("ADD", pod, net.conf(), env=agent.env).rc == 0
            assert net.call("DEL", pod, net.conf(), env=agent.env).rc == 0
            assert agent.status()["requestsServed"] == 2
            log = agent.log.read_text()
            assert f"metrics: cannot listen on 127.0.0.1:{agent.metrics_port}" in log
        finally:
            agent.stop()


def test_idle_metrics_connections_are_bounded_and_time_out(agent: Agent) -> None:
    threads = agent.threads()
    started = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", agent.metrics_port)) for _ in range(12)]
    try:
        # Beyond MAX_CLIENTS they are closed at once; the others cost a thread each.
        beyond = len(idle) - MAX_CLIENTS
        wait_for("the ones beyond the limit to be closed", lambda: count_closed(idle) >= beyond)
        assert agent.threads() <= threads + MAX_CLIENTS
        # Then the ones it took time out, and a scrape is answered.
        wait_for("the others to time out", lambda: count_closed(idle) == len(idle), timeout=10)
        assert time.monotonic() - started < CLIENT_TIMEOUT + 3
        assert "loxi_cni_attachments 0" in agent.metrics(timeout=5)
        assert agent.threads() <= threads + 1
    finally:
        for conn in idle:
            conn.close()


def test_a_scrape_answers_while_a_store_lock_is_held(agent: Agent, net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    assert net.call("ADD", pod, conf, env=agent.env).rc == 0
    with holding_store_lock(net):  # a long ADD, or the reference plugin, holds it
        text = agent.metrics(timeout=5)
    labels = f'network="{net.name}",range="10.99.0.1-10.99.0.254"'
    assert f"loxi_cni_addresses_in_use{{{labels}}} 1" in text
    assert net.call("DEL", pod, conf, env=agent.env).rc == 0


def test_a_request_must_arrive_whole_within_the_read_timeout(agent: Agent) -> None:
    """A client sending a byte a second is never idle for long, yet its request is cut off
    READ_TIMEOUT after it connected."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(agent.socket)
        started = time.monotonic()
        conn.sendall(b"LXC1" + struct.pack(">I", 64))  # 64 bytes of environment to follow
        cut_after = None
        while time.monotonic() - started < READ_TIMEOUT + 5:
            if select.select([conn], [], [], 1.0)[0] and closed_by_peer(conn):
                cut_after = time.monotonic() - started
                break
            try:
                conn.send(b"A")
            except (BrokenPipeError, ConnectionResetError):
                cut_after = time.monotonic() - started
                break
    assert cut_after is not None, "the agent waited for the trickle"
    assert READ_TIMEOUT - 1 <= cut_after <= READ_TIMEOUT + 2
    assert agent.status()["agent"] == "up"


def test_idle_connections_hold_no_worker(agent: Agent, net: Net) -> None:
    """More idle connections than workers, and than the agent keeps open: the oldest beyond
    the limit are dropped, requests that arrive whole are served at once, and no thread is
    spent on the idle ones."""
    threads = agent.threads()
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS + WORKERS):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(agent.socket)
            idle.append(conn)
        opened = time.monotonic()
        assert agent.threads() <= threads + 1
        # At once, not at the read timeout: the oldest beyond the limit are dropped.
        oldest = idle[:WORKERS]
        wait_for("the oldest to be dropped", lambda: count_closed(oldest) == WORKERS, timeout=5)
        conf = net.conf()
        pod = net.pod()
        started = time.monotonic()
        added = net.call("ADD", pod, conf, env={**agent.env, "LOXI_CNI_TIMEOUT": "5"})
        assert added.rc == 0, added.stdout
        assert time.monotonic() - started < 3
        assert agent.threads() <= threads + 1
        if time.monotonic() - opened < READ_TIMEOUT - 1:  # the rest wait for their timeout
            assert count_closed(idle[WORKERS + 1 :]) == 0
        # The rest are dropped at the read timeout; the agent serves on.
        wait_for("idle ones to be dropped", lambda: count_closed(idle) == len(idle), timeout=15)
        assert net.call("DEL", pod, conf, env=agent.env).rc == 0
        assert links_of_bridge(net.bridge) == []
    finally:
        for conn in idle:
            conn.close()
