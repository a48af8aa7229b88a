"""Integration harness: exec the installed plugin like a runtime, in real network namespaces.

Everything a test makes (namespaces, bridges, data dirs) carries a per-test unique name and is
removed afterwards, even when the test fails.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute, NetNS

from tests.support.host import delete_links
from tests.support.ipam import reservation_files
from tests.support.plugin import PLUGIN

# The reference plugins, a CNI 1.1 release built by scripts/reference-plugins.sh (make test).
REFERENCE_DIR = os.environ.get("LOXI_REFERENCE_CNI_DIR", "/var/cache/loxi-cni/cni-plugins-v1.10.0")


@dataclass
class Call:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


def run_plugin(
    command: str,
    conf: dict[str, Any] | bytes,
    *,
    container_id: str = "",
    netns: str = "",
    ifname: str = "eth0",
    args: str = "",
    path: str = f"/opt/cni/bin:{REFERENCE_DIR}",
    plugin: str = PLUGIN,
    env: dict[str, str] | None = None,
) -> Call:
    """Exec a CNI plugin once with the CNI env and ``conf`` on stdin."""
    full_env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": path}
    if "LOXI_CNI_SOCKET" in os.environ:
        full_env["LOXI_CNI_SOCKET"] = os.environ["LOXI_CNI_SOCKET"]
    for key, value in (
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", args),
    ):
        if value:
            full_env[key] = value
    full_env.update(env or {})
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = subprocess.run([plugin], input=stdin, env=full_env, capture_output=True, timeout=60)
    return Call(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@dataclass
class Pod:
    """A pod sandbox: a named network namespace."""

    name: str
    container_id: str
    path: str

    def ipr(self) -> NetNS:
        return NetNS(self.name)

    def sh(
        self, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )


@dataclass
class Net:
    """A test network: unique network name, bridge and data dir, plus its pods."""

    name: str
    bridge: str
    data_dir: Path
    pods: list[Pod] = field(default_factory=list)

    def conf(
        self, version: str = "1.1.0", subnet: str = "10.99.0.0/24", **extra: Any
    ) -> dict[str, Any]:
        ipam: dict[str, Any] = {
            "type": "host-local",
            "subnet": subnet,
            "dataDir": str(self.data_dir),
        }
        ipam.update(extra.pop("ipam", {}))
        conf: dict[str, Any] = {
            "cniVersion": version,
            "name": self.name,
            "type": "loxi-cni",
            "bridge": self.bridge,
            "isGateway": True,
            "ipam": ipam,
        }
        conf.update(extra)
        return conf

    def pod(self) -> Pod:
        tag = uuid.uuid4().hex[:10]
        name = f"loxit-{tag}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        pod = Pod(name=name, container_id=f"c{tag}", path=f"/var/run/netns/{name}")
        self.pods.append(pod)
        return pod

    def call(
        self, command: str, pod: Pod, conf: dict[str, Any], ifname: str = "eth0", **kw: Any
    ) -> Call:
        kw.setdefault("container_id", pod.container_id)
        kw.setdefault("netns", pod.path)
        return run_plugin(command, conf, ifname=ifname, **kw)

    def reservations(self) -> dict[str, str]:
        """IP file name -> content, of this network's host-local store."""
        return reservation_files(self.data_dir, self.name)


@contextmanager
def holding_store_lock(net: Net) -> Iterator[None]:
    """Hold the network's host-local store lock: an ADD blocks inside its IPAM step."""
    directory = net.data_dir / net.name
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def store_lock(net: Net) -> Path:
    return net.data_dir / net.name / "lock"


def pod_addresses(pod: Pod, ifname: str = "eth0") -> list[str]:
    """The addresses (with prefix length) on the pod's interface, read back from its netns."""
    with pod.ipr() as ns:
        (index,) = ns.link_lookup(ifname=ifname)
        return sorted(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ns.get_addr(index=index))


def host_links() -> dict[str, Any]:
    with IPRoute() as ipr:
        return {m.get("IFLA_IFNAME"): m for m in ipr.get_links()}


def links_of_bridge(bridge: str) -> list[str]:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            return []
        return [m.get("IFLA_IFNAME") for m in ipr.get_links() if m.get("IFLA_MASTER") == found[0]]


@pytest.fixture(scope="session")
def agent_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's agent writes a network config's logFile (LOXI_CNI_LOG_DIR)."""
    return tmp_path_factory.mktemp("agent-logs")


@pytest.fixture(scope="session")
def agent_socket(tmp_path_factory: pytest.TempPathFactory, agent_log_dir: Path) -> Iterator[str]:
    """A node agent for the whole session, on a private socket."""
    directory = tmp_path_factory.mktemp("agent")
    sock = str(directory / "agent.sock")
    log = directory / "agent.log"  # a file, not a pipe nobody reads: that would fill and block
    env = {**os.environ, "LOXI_CNI_LOG_DIR": str(agent_log_dir)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [PLUGIN, "agent", "--socket", sock, "--metrics", "off"], stderr=out, env=env
        )
    deadline = time.monotonic() + 20  # a loaded machine starts it slowly
    while not os.path.exists(sock):
        if proc.poll() is not None:
            pytest.fail(f"the agent exited: {log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the agent did not create its socket within 20 s: {log.read_text()}")
        time.sleep(0.05)
    yield sock
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=["standalone", "agent"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every integration test runs against the plugin alone and through the node agent."""
    if request.param == "agent":
        os.environ["LOXI_CNI_SOCKET"] = request.getfixturevalue("agent_socket")
    else:
        os.environ["LOXI_CNI_SOCKET"] = "/nonexistent/loxi-cni.sock"
    yield request.param
    os.environ.pop("LOXI_CNI_SOCKET", None)


@contextmanager
def make_net(tmp_path: Path) -> Iterator[Net]:
    """A fresh network; its pods' namespaces and its bridge are removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    network = Net(name=f"loxit-{tag}", bridge=f"lxbr{tag}", data_dir=tmp_path / "ipam")
    try:
        yield network
    finally:
        for pod in network.pods:
            subprocess.run(["ip", "netns", "del", pod.name], capture_output=True)
        delete_links(network.bridge)


@pytest.fixture
def net(tmp_path: Path, mode: str) -> Iterator[Net]:
    with make_net(tmp_path) as network:
        yield network


@pytest.fixture(autouse=True, scope="session")
def _plugin_installed() -> None:
    if not os.access(PLUGIN, os.X_OK):
        pytest.fail(f"{PLUGIN} is not installed: run `make install` (make test does)")
