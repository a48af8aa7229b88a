"""The agent's start in Kubernetes mode, fifty times over: every start survives its first lists.

Right after it starts serving, the agent's Pod and Node watches list for the first time, in
two threads at once: the moment each process first decodes the API's answers into lightkube's
models. The agent is started against the real API server ``BATCH`` at a time (start-up timing
on a busy node varies the most), and each must list, write the CNI config from its Node, answer
``loxi-cni status``, keep running for a while, and exit cleanly on SIGTERM.

A start crashes only now and then, so the cause is also checked directly and every time: the
msgspec that lightkube decodes with must never let one thread decode with a type's schema that
another thread is still building.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

from .cluster import Cluster, free_pod_cidr, wait_for
from .controlplane import ControlPlane

STARTS = 50
BATCH = 10  # agents starting at once
HOLD = 2.0  # seconds every agent of a batch must stay up after its watches listed
PODS = 3  # Pods on the node: the first Pod list decodes whole Pods, not an empty list


# Thread A's first decode of Outer builds its schema; for the field `inner` it evaluates
# Inner's annotations, where it waits (the GIL released) until thread B has decoded an Outer.
# B must build its own schema or wait for A's, never decode with A's unfinished one.
FIRST_USE_IN_TWO_THREADS = """
import threading
import msgspec

building, decoded = threading.Event(), threading.Event()

def int_once_b_decoded():
    if threading.current_thread().name == "A":
        building.set()
        decoded.wait(10)
    return int

class Inner(msgspec.Struct):
    value: "int_once_b_decoded()"

class Outer(msgspec.Struct):
    name: str
    inner: Inner

DATA = b'{"name": "x", "inner": {"value": 1}}'
got = {}

def a():
    got["A"] = msgspec.json.decode(DATA, type=Outer)

def b():
    building.wait(10)
    try:
        got["B"] = msgspec.json.decode(DATA, type=Outer)
    finally:
        decoded.set()

threads = [threading.Thread(target=a, name="A"), threading.Thread(target=b, name="B")]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert got == {"A": Outer("x", Inner(1)), "B": Outer("x", Inner(1))}, got
"""


def test_a_type_first_decoded_in_two_threads_at_once_decodes_in_both() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_USE_IN_TWO_THREADS], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"


def _exit_of(agent: Cluster) -> str:
    assert agent.proc is not None
    code = agent.proc.returncode
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
    return f"the agent in {agent.workdir} exited ({how}):\n{agent.log.read_text()[-3000:]}"


def _listed(agent: Cluster) -> bool:
    """Both watches have listed: the CNI config is written (the Node) and the Pods synced."""
    assert agent.proc is not None
    if agent.proc.poll() is not None:
        raise AssertionError(_exit_of(agent))
    if not agent.conf_path.exists():
        return False
    return bool(agent.status().get("kubernetes", {}).get("podsSynced"))


def test_fifty_agent_starts_survive_their_first_lists(
    control_plane: ControlPlane, agent_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    v4 = free_pod_cidr()
    v6 = ipaddress.ip_network(f"fd97:{v4.network_address.packed[2]:x}::/64")
    cidrs = [str(v4), str(v6)]
    node = f"node-{uuid.uuid4().hex[:8]}"
    control_plane.create_node(node, cidrs)
    try:
        for i in range(PODS):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"p{i}", "namespace": namespace, "labels": {"app": "p"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            }
            control_plane.kubectl("create", "-f", "-", input=json.dumps(pod))

        for first in range(0, STARTS, BATCH):
            agents = [
                Cluster(control_plane, agent_kubeconfig, namespace, tmp_path / str(n), node, cidrs)
                for n in range(first, first + BATCH)
            ]
            try:
                for agent in agents:
                    agent.workdir.mkdir()
                    agent.launch_agent()
                for agent in agents:
                    wait_for(f"the agent in {agent.workdir} to list", partial(_listed, agent), 90)
                time.sleep(HOLD)
                for agent in agents:
                    assert agent.proc is not None
                    assert agent.proc.poll() is None, _exit_of(agent)
                    kube = agent.status()["kubernetes"]
                    assert kube["podsSynced"] and kube["podsWatched"] == PODS
                    assert kube["podCIDRs"] == cidrs and kube["cniConfigError"] == ""
                    conflist = json.loads(agent.conf_path.read_text())
                    ranges = conflist["plugins"][0]["ipam"]["ranges"]
                    assert ranges == [[{"subnet": c}] for c in cidrs]
                for agent in agents:
                    assert agent.proc is not None
                    agent.proc.terminate()
                for agent in agents:
                    assert agent.proc is not None
                    agent.proc.wait(timeout=15)
                    assert agent.proc.returncode == 0, _exit_of(agent)
            finally:
                for agent in agents:
                    agent.stop_agent()
    finally:
        control_plane.kubectl("delete", "node", node, "--wait=false", check=False)
