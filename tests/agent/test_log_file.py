"""A network config's logFile in the agent, which runs as root for every network on the node:
written only directly in the log directory, never through a link, and with its own
network's lines only."""

from __future__ import annotations

import os
from pathlib import Path

from tests.agent.harness import Agent
from tests.integration.conftest import Net, links_of_bridge, make_net


def test_a_log_file_gets_the_lines_of_its_own_requests_only(
    agent: Agent, net: Net, tmp_path: Path
) -> None:
    assert agent.log_dir is not None
    agent.log_dir.mkdir(parents=True, exist_ok=True)
    logged = agent.log_dir / "pods.log"
    conf = net.conf(logFile=str(logged))
    with make_net(tmp_path / "other") as other:
        other_conf = other.conf(subnet="10.98.0.0/24")
        pod, stranger = net.pod(), other.pod()
        assert net.call("ADD", pod, conf, env=agent.env).rc == 0
        # Another network's calls, after the first one named its logFile.
        assert other.call("ADD", stranger, other_conf, env=agent.env).rc == 0
        assert other.call("DEL", stranger, other_conf, env=agent.env).rc == 0
        assert net.call("DEL", pod, conf, env=agent.env).rc == 0
    text = logged.read_text()
    assert f"ADD {net.name} {pod.container_id}/eth0: 10.99.0.2/24" in text
    assert f"DEL {net.name} {pod.container_id}/eth0" in text
    assert other.name not in text and stranger.container_id not in text
    assert logged.stat().st_mode & 0o777 == 0o640
    assert links_of_bridge(net.bridge) == []


def test_a_log_file_elsewhere_is_never_written(agent: Agent, net: Net, tmp_path: Path) -> None:
    assert agent.log_dir is not None
    agent.log_dir.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside.log"
    target = tmp_path / "target.log"
    (agent.log_dir / "link.log").symlink_to(target)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.link(victim, agent.log_dir / "hard.log")
    escape = f"{agent.log_dir}/../escape.log"
    asked = [str(outside), str(agent.log_dir / "link.log"), str(agent.log_dir / "hard.log"), escape]
    for path in asked:
        conf = net.conf(logFile=path)
        pod = net.pod()
        added = net.call("ADD", pod, conf, env=agent.env)
        assert added.rc == 0, added.stdout  # a log file never fails a call
        assert net.call("DEL", pod, conf, env=agent.env).rc == 0
    assert not outside.exists() and not target.exists()
    assert not Path(os.path.normpath(escape)).exists()
    assert victim.read_text() == "precious\n"
    log = agent.log.read_text()
    for path in asked:
        assert f"logFile {path} ignored" in log
    assert links_of_bridge(net.bridge) == [] and net.reservations() == {}
