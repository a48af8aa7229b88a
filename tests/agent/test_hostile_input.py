"""Input no runtime should send, through the agent and in-process: a clean CNI error, nothing
made, and the agent's metrics and namespaces left as they were."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.harness import Agent
from tests.integration.conftest import REFERENCE_DIR, Net, links_of_bridge, run_plugin
from tests.support.plugin import PLUGIN

# The Python plugin of this tree, as runtimes reach it without the compiled shim.
PYTHON_PLUGIN = [sys.executable, "-m", "loxicni.main"]
REPO = Path(__file__).resolve().parents[2]

NOT_UTF8 = [
    ("CNI_IFNAME", b"eth\xff0"),
    ("CNI_ARGS", b"IgnoreUnknown=1;K8S_POD_NAME=web\xfe"),
]


@pytest.mark.parametrize(("variable", "value"), NOT_UTF8, ids=[v for v, _ in NOT_UTF8])
@pytest.mark.parametrize("path", ["agent", "in-process"])
def test_environment_bytes_that_are_not_utf8_get_a_cni_error(
    agent: Agent, net: Net, variable: str, value: bytes, path: str
) -> None:
    pod = net.pod()
    env = {
        b"PATH": b"/usr/sbin:/usr/bin:/sbin:/bin",
        b"CNI_COMMAND": b"ADD",
        b"CNI_CONTAINERID": pod.container_id.encode(),
        b"CNI_NETNS": pod.path.encode(),
        b"CNI_IFNAME": b"eth0",
        b"CNI_PATH": REFERENCE_DIR.encode(),
        b"LOXI_CNI_SOCKET": agent.socket.encode(),
        b"LOXI_CNI_STATE_DIR": str(agent.state_dir).encode(),
        variable.encode(): value,
    }
    if path == "in-process":
        env[b"LOXI_CNI_NO_AGENT"] = b"1"
    conf = json.dumps(net.conf()).encode()
    for argv in ([PLUGIN], PYTHON_PLUGIN):
        proc = subprocess.run(argv, input=conf, env=env, capture_output=True, timeout=60, cwd=REPO)
        assert proc.returncode == 1, (argv, proc)
        reply = json.loads(proc.stdout)
        assert reply["code"] == 4 and "not valid UTF-8" in reply["msg"], (argv, reply)
        assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    assert links_of_bridge(net.bridge) == [] and net.reservations() == {}
    assert agent.alive()


# One sample line of the Prometheus text format: name, optional labels, value.
SAMPLE = re.compile(r'[a-z_]+(\{[a-z]+="[^"\\\n]*"(,[a-z]+="[^"\\\n]*")*\})? [0-9.e+-]+|\+Inf')


def test_an_unknown_command_is_counted_as_other(agent: Agent, net: Net) -> None:
    """A command the agent does not know must not write the metrics' text."""
    evil = 'evil"} 1\nloxi_cni_attachments 99\n#'
    res = run_plugin("ADD", net.conf(), env={**agent.env, "CNI_COMMAND": evil})
    assert res.rc == 1 and res.json["code"] == 4, res.stdout
    text = agent.metrics()
    assert 'loxi_cni_requests_total{command="other"} 1' in text
    assert "evil" not in text and "loxi_cni_attachments 0" in text
    for line in text.splitlines():
        assert line.startswith("#") or SAMPLE.fullmatch(line), line


def test_a_netns_the_client_cannot_open_is_not_opened_by_the_agent(agent: Agent, net: Net) -> None:
    """The runtime names the pod's netns by a path in its own mount and PID namespaces; if the
    client cannot open it there, the agent must not resolve it in its own (where the same
    path may be another netns)."""
    pod = net.pod()
    holder = subprocess.Popen(["ip", "netns", "exec", pod.name, "sleep", "60"])
    try:
        # A path that names the pod's netns in the agent's PID namespace only.
        netns = f"/proc/{holder.pid}/ns/net"
        env = {**agent.env, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod.container_id,
               "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": REFERENCE_DIR,
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # fmt: skip
        proc = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", PLUGIN],
            input=json.dumps(net.conf()).encode(),
            env=env,
            capture_output=True,
            timeout=60,
        )
    finally:
        holder.kill()
        holder.wait(10)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 1 and reply["code"] == 3, reply
    with pod.ipr() as ns:
        assert [link.get("IFLA_IFNAME") for link in ns.get_links()] == ["lo"]
    assert links_of_bridge(net.bridge) == [] and net.reservations() == {}
    assert agent.status()["attachments"] == 0
