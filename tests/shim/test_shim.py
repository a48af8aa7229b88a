"""The installed executable (shim/loxi-cni.c) against the Python plugin it fronts.

A runtime must not be able to tell them apart: the same bytes to the agent (checked by a fake
agent that records what arrives, SCM_RIGHTS fd included), the same stdout and exit code for
VERSION, for the admin CLI and for the in-process path, and CNI error 11 when an agent takes a
request and never answers.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loxicni.base import wire
from loxicni.cni.version import SUPPORTED_VERSIONS
from tests.integration.conftest import PLUGIN, Net, make_net

REPO = Path(__file__).resolve().parents[2]
# The same plugin run as Python, from this tree: what the shim must be indistinguishable from.
PYTHON_PLUGIN = [sys.executable, "-m", "loxicni.main"]
MAX_STDIN = wire.MAX_STDIN
MAX_ENV = wire.MAX_ENV


@dataclass
class Run:
    rc: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def error(self) -> dict[str, object]:
        assert self.rc == 1, self
        reply = json.loads(self.stdout)
        assert isinstance(reply, dict) and self.stdout.endswith(b"\n")
        return reply


def run(argv: list[str], env: dict[str, str], stdin: bytes = b"", timeout: float = 60) -> Run:
    start = time.monotonic()
    proc = subprocess.run(
        argv,
        input=stdin,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def both(env: dict[str, str], stdin: bytes = b"", args: tuple[str, ...] = ()) -> Run:
    """Run the shim and the Python plugin alike; they must give the same answer."""
    shim = run([PLUGIN, *args], env, stdin)
    python = run([*PYTHON_PLUGIN, *args], env, stdin)
    assert (shim.rc, shim.stdout, shim.stderr) == (python.rc, python.stdout, python.stderr)
    return shim


# --- a fake agent -----------------------------------------------------------------------------


@dataclass
class Received:
    data: bytes
    fds: list[int]


@dataclass
class FakeAgent:
    """A unix socket served by ``handle`` for each connection, in a thread."""

    path: str
    handle: Callable[[socket.socket, FakeAgent], None]
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def read_request(conn: socket.socket) -> Received:
    """One framed request, as raw bytes, plus every fd that rode along."""
    buf = bytearray()
    fds: list[int] = []

    def need(n: int) -> None:
        while len(buf) < n:
            data, ancdata, _flags, _addr = conn.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
            assert data, "the client closed the connection mid-request"
            buf.extend(data)

    need(8)
    env_len = int.from_bytes(buf[4:8], "big")
    need(8 + env_len + 4)
    stdin_len = int.from_bytes(buf[8 + env_len : 12 + env_len], "big")
    need(12 + env_len + stdin_len)
    return Received(bytes(buf), fds)


def answer(code: int, out: bytes) -> Callable[[socket.socket, FakeAgent], None]:
    def handle(conn: socket.socket, agent: FakeAgent) -> None:
        agent.received.append(read_request(conn))
        conn.sendall(b"LXR1" + code.to_bytes(4, "big") + len(out).to_bytes(4, "big") + out)

    return handle


def hang_up(conn: socket.socket, agent: FakeAgent) -> None:
    conn.close()


def wedge(conn: socket.socket, agent: FakeAgent) -> None:
    agent.release.wait(60)


@contextmanager
def fake_agent(
    tmp_path: Path, handle: Callable[[socket.socket, FakeAgent], None], path: Path | None = None
) -> Iterator[FakeAgent]:
    agent = FakeAgent(str(path or tmp_path / f"agent-{uuid.uuid4().hex[:6]}.sock"), handle)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(agent.path)
    server.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                handle(conn, agent)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.release.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(10)
        for got in agent.received:
            for fd in got.fds:
                os.close(fd)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"loxishim-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    yield f"/var/run/netns/{name}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def cni_env(command: str, netns: str = "", **extra: str) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        **extra,
    }
    if netns:
        env["CNI_NETNS"] = netns
    return env


CONFIG = b'{"cniVersion":"0.4.0","name":"shim","type":"loxi-cni","bridge":"lxshim0"}'


# --- talking to the agent ---------------------------------------------------------------------


def test_request_bytes_and_netns_fd_match_the_python_client(tmp_path: Path, netns: str) -> None:
    with fake_agent(tmp_path, answer(3, b'{"some":"answer"}\n')) as agent:
        env = cni_env(
            "ADD",
            netns,
            CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=a=b",
            LOXI_CNI_LOG_LEVEL="DEBUG",
            LOXI_CNI_SOCKET=agent.path,
            LOXI_CNI_STATE_DIR="/not/forwarded",
            UNRELATED="x" * 100_000,  # neither forwarded nor counted against the 64 KiB
        )
        reply = both(env, CONFIG)
        assert (reply.rc, reply.stdout) == (3, b'{"some":"answer"}\n')
        shim, python = agent.received
        assert shim.data == python.data
        assert shim.data == wire.encode_request(wire.forwarded_env(env), CONFIG)
        assert b"LOXI_CNI_LOG_LEVEL=DEBUG" in shim.data and b"STATE_DIR" not in shim.data
        # The fd the agent gets is the pod's netns itself, whatever path the agent can see.
        netns_inode = os.stat(netns)
        for got in (shim, python):
            (fd,) = got.fds
            held = os.fstat(fd)
            assert (held.st_dev, held.st_ino) == (netns_inode.st_dev, netns_inode.st_ino)


def test_a_netns_that_cannot_be_opened_is_sent_as_its_path_only(tmp_path: Path) -> None:
    with fake_agent(tmp_path, answer(0, b"")) as agent:
        env = cni_env("DEL", "/var/run/netns/gone-already", LOXI_CNI_SOCKET=agent.path)
        assert both(env, CONFIG).rc == 0
        for got in agent.received:
            assert got.fds == [] and b"CNI_NETNS=/var/run/netns/gone-already" in got.data


def test_the_socket_follows_the_run_dir(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with fake_agent(tmp_path, answer(0, b"here\n"), tmp_path / "run" / "agent.sock"):
        env = cni_env("DEL", LOXI_CNI_RUN_DIR=str(tmp_path / "run"))
        assert both(env, CONFIG).stdout == b"here\n"


def test_the_largest_config_the_agent_takes_arrives_whole(tmp_path: Path, netns: str) -> None:
    config = b'{"cniVersion":"1.1.0","pad":"' + b"p" * (MAX_STDIN - 32) + b'"}'
    config += b" " * (MAX_STDIN - len(config))
    with fake_agent(tmp_path, answer(0, b"done\n")) as agent:
        reply = run([PLUGIN], cni_env("ADD", netns, LOXI_CNI_SOCKET=agent.path), config)
        assert (reply.rc, reply.stdout) == (0, b"done\n")
        (got,) = agent.received
        assert got.data.endswith(len(config).to_bytes(4, "big") + config)
        assert len(got.fds) == 1


def test_an_agent_that_hangs_up_gives_try_again(tmp_path: Path) -> None:
    config = b'{"cniVersion": "0.3.1", "name": "shim"}'
    with fake_agent(tmp_path, hang_up) as agent:
        reply = run([PLUGIN], cni_env("ADD", LOXI_CNI_SOCKET=agent.path), config)
    error = reply.error
    assert error["code"] == 11 and error["cniVersion"] == "0.3.1"
    assert error["msg"] == "loxi-cni agent did not answer; try again" and error["details"]


def test_a_wedged_agent_gives_try_again_within_the_timeout(tmp_path: Path, netns: str) -> None:
    with fake_agent(tmp_path, wedge) as agent:
        env = cni_env("ADD", netns, LOXI_CNI_SOCKET=agent.path, LOXI_CNI_TIMEOUT="1")
        reply = both(env, CONFIG)
    assert reply.error == {
        "cniVersion": "0.4.0",
        "code": 11,
        "msg": "loxi-cni agent did not answer; try again",
        "details": "timed out",
    }
    assert 1 <= reply.seconds < 3


@pytest.mark.parametrize(
    ("config", "version"),
    [
        (b'{"cniVersion": "0.3.1", "name": "shim"}', "0.3.1"),
        (b'{"name": "shim", "cniVersion" :"1.0"}', "1.0"),
        (b'{"cniVersion":"x\\"\x01","name":"shim"}', "1.1.0"),  # not a version: the latest
        (b'{"cniVersion":"1\\" , \\"x","name":"shim"}', "1.1.0"),  # nor is a quote spliced in
        (b'{"cniVersion":"","name":"shim"}', "1.1.0"),
        (b'{"name":"shim"}', "1.1.0"),
    ],
)
def test_try_again_speaks_the_configs_version(tmp_path: Path, config: bytes, version: str) -> None:
    with fake_agent(tmp_path, hang_up) as agent:
        reply = run([PLUGIN], cni_env("ADD", LOXI_CNI_SOCKET=agent.path), config)
    assert reply.error["cniVersion"] == version


def test_an_agent_answering_garbage_gives_try_again(tmp_path: Path) -> None:
    def garbage(conn: socket.socket, agent: FakeAgent) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")

    with fake_agent(tmp_path, garbage) as agent:
        reply = run([PLUGIN], cni_env("ADD", LOXI_CNI_SOCKET=agent.path), CONFIG)
    assert reply.error["code"] == 11
    assert reply.error["details"] == "the agent answered in an unknown format"


# --- no agent: the in-process path --------------------------------------------------------------


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with make_net(tmp_path) as network:
        yield network


def test_without_an_agent_the_result_is_the_python_paths(tmp_path: Path, net: Net) -> None:
    pod = net.pod()
    conf = json.dumps(net.conf("1.0.0")).encode()
    env = {
        **cni_env("ADD", pod.path, CNI_ARGS="IP=10.99.0.77;MAC=02:00:00:00:00:77"),
        "CNI_CONTAINERID": pod.container_id,
        "LOXI_CNI_SOCKET": str(tmp_path / "nobody-listens.sock"),
        "LOXI_CNI_STATE_DIR": str(tmp_path / "state"),
        "LOXI_CNI_RUN_DIR": str(tmp_path / "run"),
    }
    results = []
    for argv in ([PLUGIN], PYTHON_PLUGIN):
        add = run(argv, env, conf)
        assert add.rc == 0, add
        results.append(json.loads(add.stdout))
        assert run(argv, {**env, "CNI_COMMAND": "DEL"}, conf).rc == 0
    shim, python = results
    # Everything but the host veth's MAC, which the kernel picks anew for each pair.
    for result in results:
        for interface in result["interfaces"]:
            if not interface.get("sandbox") and interface["name"] != net.bridge:
                interface["mac"] = "host veth"
    assert shim == python
    assert shim["ips"][0]["address"] == "10.99.0.77/24"
    assert net.reservations() == {}


def test_without_an_agent_errors_are_the_python_paths(tmp_path: Path) -> None:
    env = cni_env("ADD", "/var/run/netns/none", LOXI_CNI_SOCKET=str(tmp_path / "none.sock"))
    reply = both(env, b'{"cniVersion":"0.0.9","name":"x","type":"loxi-cni"}')
    assert reply.error["code"] == 1
    assert both(env, b"{not json").error["code"] == 6


def test_an_agent_too_busy_to_accept_is_bypassed_after_five_seconds(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(0)  # one pending connection fills the queue: the next connect waits
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as filler:
            filler.connect(path)
            env = cni_env("ADD", LOXI_CNI_SOCKET=path)
            reply = run([PLUGIN], env, b'{"cniVersion":"0.0.9"}')
    assert 5 <= reply.seconds < 8
    in_process = run(PYTHON_PLUGIN, {**env, "LOXI_CNI_NO_AGENT": "1"}, b'{"cniVersion":"0.0.9"}')
    assert (reply.rc, reply.stdout) == (in_process.rc, in_process.stdout)
    assert reply.error["code"] == 4  # no CNI_NETNS for an ADD


# --- bounded input --------------------------------------------------------------------------


def test_a_config_over_4_mib_is_a_cni_error(tmp_path: Path) -> None:
    config = b'{"cniVersion":"1.0.0","pad":"' + b"p" * MAX_STDIN + b'"}'
    env = cni_env("ADD", LOXI_CNI_SOCKET=str(tmp_path / "none.sock"))
    reply = run([PLUGIN], env, config)
    assert reply.error == {
        "cniVersion": "1.0.0",
        "code": 6,
        "msg": f"config of {len(config)} bytes exceeds {MAX_STDIN}",
    }


def test_an_environment_over_64_kib_is_a_cni_error(tmp_path: Path) -> None:
    env = cni_env("ADD", CNI_ARGS="IgnoreUnknown=1;X=" + "a" * MAX_ENV)
    env["LOXI_CNI_SOCKET"] = str(tmp_path / "none.sock")
    size = len(wire.encode_request(wire.forwarded_env(env), b"")) - 12
    reply = run([PLUGIN], env, CONFIG)
    assert reply.error == {
        "cniVersion": "0.4.0",
        "code": 4,
        "msg": f"environment of {size} bytes exceeds {MAX_ENV}",
    }


# --- VERSION and the admin CLI ---------------------------------------------------------------


VERSION_REPLY = (
    json.dumps(
        {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}, separators=(",", ":")
    )
    + "\n"
).encode()


@pytest.mark.parametrize(
    ("stdin", "answered"),
    [
        (b"", True),
        (b" \t\r\n\x0b\x0c", True),
        (b'{"cniVersion":"0.4.0"}', True),
        (
            b'\n {"cniVersion" : "9.9.9", "plugins": [{"n": -1.5e+3, "t": true, "f": false, '
            b'"z": null, "o": {}, "l": [], "s": "\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9"}]} \n',
            True,
        ),
        (b'{"a":' * 100 + b"1" + b"}" * 100, True),  # deeper than the shim judges: Python does
        (b'{"s":"\xc3\xa9"}', True),
        (b'{"s":"\\ud800"}', True),
        (b'{"n":' + b"1" * 5000 + b"}", False),  # too many digits for Python's int()
        (b'{"s":"\\u00E9\\uD83D\\ude00"}', True),
        (b'{"s":"\\u00zz"}', False),
        (b'{"s":"\\x"}', False),
        (b'{"cniVersion":"1.0.0"', False),
        (b'{"a":1}x', False),
        (b'{"a":01}', False),
        (b'{"a":NaN}', False),
        (b'{"a":"\x01"}', False),
        (b"\x0b{}\x00", False),
        (b"\xef\xbb\xbf{}", True),  # json.loads drops a UTF-8 BOM from bytes
        (b"[]", False),
    ],
)
def test_version_answers_as_python_does(stdin: bytes, answered: bool) -> None:
    reply = both({"CNI_COMMAND": "VERSION"}, stdin)
    if answered:
        assert (reply.rc, reply.stdout) == (0, VERSION_REPLY)
    else:
        assert reply.error["code"] == 6
    again = both({"CNI_COMMAND": "VERSION", "LOXI_CNI_NO_AGENT": "1"}, stdin)
    assert (again.rc, again.stdout) == (reply.rc, reply.stdout)


def test_version_reads_all_stdin() -> None:
    proc = subprocess.Popen(
        [PLUGIN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"CNI_COMMAND": "VERSION"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    # More than a pipe holds: a plugin that exits unread breaks the runtime's write.
    proc.stdin.write(b" " * 300_000 + b'{"cniVersion":"1.1.0"}')
    proc.stdin.close()
    assert proc.stdout.read() == VERSION_REPLY
    assert proc.wait(10) == 0


@pytest.mark.parametrize(
    "args", [("version",), ("version", "--json"), ("--help",), ("no-such-command",)]
)
def test_admin_cli_is_the_python_cli(args: tuple[str, ...]) -> None:
    reply = both({}, args=args)
    assert reply.stdout or reply.stderr


def test_status_through_the_shim_sees_no_agent(tmp_path: Path) -> None:
    reply = both({}, args=("status", "--json", "--socket", str(tmp_path / "none.sock")))
    assert reply.rc == 1 and json.loads(reply.stdout)["agent"] == "down"


# --- the C source ----------------------------------------------------------------------------


def build_shim(tmp_path: Path, python_argv: list[str]) -> Path:
    """Compile shim/loxi-cni.c as scripts/write-launcher.sh does, warnings as errors."""
    out = tmp_path / "loxi-cni"
    argv = ",".join(json.dumps(a) for a in python_argv)
    proc = subprocess.run(
        [
            shutil.which("cc") or "cc",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-static",
            f"-DLOXI_PYTHON_ARGV={argv}",
            '-DLOXI_VERSION_REPLY="{}\\n"',
            "-o",
            str(out),
            str(REPO / "shim" / "loxi-cni.c"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return out


def test_version_and_the_agent_path_run_no_python(tmp_path: Path) -> None:
    shim = build_shim(tmp_path, ["/nonexistent/python3", "-I", "-S"])
    version = run([str(shim)], {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert (version.rc, version.stdout) == (0, b"{}\n")  # the reply compiled in
    with fake_agent(tmp_path, answer(0, b"ok\n")) as agent:
        add = run([str(shim)], cni_env("ADD", LOXI_CNI_SOCKET=agent.path), CONFIG)
    assert (add.rc, add.stdout) == (0, b"ok\n")
    # Where Python is needed and missing: the CLI says so, a CNI call is told to try again.
    cli = run([str(shim), "version"], {})
    assert cli.rc == 127 and b"/nonexistent/python3" in cli.stderr
    env = cni_env("ADD", LOXI_CNI_SOCKET=str(tmp_path / "none.sock"))
    error = run([str(shim)], env, CONFIG).error
    assert error["code"] == 11 and error["cniVersion"] == "0.4.0"
    assert "/nonexistent/python3" in str(error["details"])
