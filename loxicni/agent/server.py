"""The node agent: serves CNI requests from the thin client over a unix socket.

One thread per connection runs the same plugin code as the in-process path, with the netlink and
the IPAM code already imported. The socket is root-only twice over: mode 0600, and the peer's
credentials (SO_PEERCRED) must be uid 0. Bad requests (malformed, oversized, a client that
vanishes mid-request) get an error or a closed connection; the agent keeps serving.
"""

from __future__ import annotations

import array
import contextvars
import http.server
import json
import logging
import os
import signal
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loxicni.agent import state
from loxicni.agent.metrics import Metrics
from loxicni.cli import package_version
from loxicni.client import REQUEST_MAGIC, RESPONSE_MAGIC
from loxicni.cni import skel
from loxicni.cni.errors import CniError, Code
from loxicni.net.reaper import LinkReaper
from loxicni.plugin import records
from loxicni.plugin.bridge import BridgePlugin
from loxicni.plugin.config import KNOWN_ARGS

if TYPE_CHECKING:
    from loxicni.k8s.options import KubeOptions

log = logging.getLogger("loxi-cni.agent")

MAX_ENV = 64 * 1024
MAX_STDIN = 4 * 1024 * 1024
READ_TIMEOUT = 10.0  # a client has this long to send its whole request
ADMIN_KEY = "LOXI_ADMIN"

container_id: contextvars.ContextVar[str] = contextvars.ContextVar("container_id", default="-")


class ContainerFilter(logging.Filter):
    """Puts the request's container ID on every log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.container = container_id.get()
        return True


class BadRequest(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


def _recv_exact(conn: socket.socket, n: int, fds: list[int]) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data, ancdata, _flags, _addr = conn.recvmsg(
            min(n - len(buf), 1 << 20), socket.CMSG_SPACE(4 * 4)
        )
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[: len(payload) - len(payload) % 4])
                fds.extend(got)
        if not data:
            raise BadRequest(Code.IO_FAILURE, "client closed the connection mid-request")
        buf += data
    return bytes(buf)


def read_request(conn: socket.socket, fds: list[int]) -> tuple[dict[str, str], bytes]:
    """Read one framed request; BadRequest for anything malformed or oversized."""
    head = _recv_exact(conn, 8, fds)
    if head[:4] != REQUEST_MAGIC:
        raise BadRequest(Code.DECODE_FAILURE, "not a loxi-cni request")
    env_len = int.from_bytes(head[4:8], "big")
    if env_len > MAX_ENV:
        raise BadRequest(Code.INVALID_ENV, f"environment of {env_len} bytes exceeds {MAX_ENV}")
    env_block = _recv_exact(conn, env_len + 4, fds)
    stdin_len = int.from_bytes(env_block[env_len:], "big")
    if stdin_len > MAX_STDIN:
        raise BadRequest(Code.DECODE_FAILURE, f"config of {stdin_len} bytes exceeds {MAX_STDIN}")
    stdin = _recv_exact(conn, stdin_len, fds)
    env: dict[str, str] = {}
    for item in env_block[:env_len].split(b"\0"):
        if not item:
            continue
        key, sep, value = item.decode(errors="replace").partition("=")
        if not sep:
            raise BadRequest(Code.INVALID_ENV, "malformed environment entry")
        env[key] = value
    return env, stdin


def _reply(conn: socket.socket, code: int, out: bytes) -> None:
    conn.sendall(RESPONSE_MAGIC + struct.pack(">II", code, len(out)) + out)


def _refuse(conn: socket.socket, code: int, msg: str) -> None:
    """Answer a bad request, then drain a little of what the client still sends: closing
    with unread data makes the kernel reset the connection and drop the answer."""
    _reply(conn, 1, _error_bytes(code, msg))
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(1.0)
    drained = 0
    while drained < MAX_ENV:
        chunk = conn.recv(65536)
        if not chunk:
            break
        drained += len(chunk)


def _error_bytes(code: int, msg: str) -> bytes:
    return (json.dumps(CniError(code, msg).to_json("1.1.0")) + "\n").encode()


# Told of every ADD and DEL served successfully: (command, env).
AttachmentListener = Callable[[str, dict[str, str]], None]


@dataclass
class AgentState:
    metrics: Metrics
    version: str
    # More sections of the status answer, e.g. "kubernetes" in Kubernetes mode.
    sections: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        attachments = list(records.all_records())
        return {
            "agent": "up",
            "version": self.version,
            "pid": os.getpid(),
            "uptimeSeconds": round(time.time() - self.metrics.started, 3),
            "requestsServed": self.metrics.served(),
            "attachments": len(attachments),
            "addressesInUse": state.addresses_per_network(),
            **{name: section() for name, section in self.sections.items()},
        }


class Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(READ_TIMEOUT)
        fds: list[int] = []
        try:
            uid = _peer_uid(conn)
            if uid != 0:
                log.warning("refused a request from uid %s", uid)
                _refuse(conn, Code.INVALID_ENV, "the loxi-cni agent serves root only")
                return
            try:
                env, stdin = read_request(conn, fds)
            except BadRequest as exc:
                log.warning("bad request: %s", exc)
                _refuse(conn, exc.code, str(exc))
                return
            conn.settimeout(None)
            if ADMIN_KEY in env:
                _reply(conn, 0, (json.dumps(self.server.agent.status()) + "\n").encode())
                return
            code, out = self.server.serve_cni(env, stdin, fds[0] if fds else None)
            _reply(conn, code, out)
        except (OSError, BadRequest) as exc:  # the client went away: nothing to answer
            log.info("connection dropped: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # The runtime may send a storm of calls at once; the kernel queues them for accept().
    request_queue_size = 256

    def __init__(self, path: str, agent: AgentState, listen_fd: int | None = None) -> None:
        self.agent = agent
        self.reaper = LinkReaper()
        self.listeners: list[AttachmentListener] = []
        if listen_fd is not None:  # systemd socket activation: the socket is ready-made
            super().__init__(path, Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = socket.socket(fileno=listen_fd)
        else:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)  # a stale socket of a previous agent
            old = os.umask(0o177)
            try:
                super().__init__(path, Handler)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)

    def serve_cni(
        self, env: dict[str, str], stdin: bytes, netns_fd: int | None
    ) -> tuple[int, bytes]:
        command = env.get("CNI_COMMAND", "?")
        token = container_id.set(env.get("CNI_CONTAINERID") or "-")
        start = time.perf_counter()
        try:
            plugin = BridgePlugin(netns_fd=netns_fd, reaper=self.reaper)
            code, out = skel.run(plugin, env, stdin, KNOWN_ARGS)
        finally:
            container_id.reset(token)
        error_code = 0
        if code:
            try:
                error_code = int(json.loads(out)["code"])
            except (ValueError, KeyError, TypeError):
                error_code = Code.INTERNAL
        self.agent.metrics.observe(command, time.perf_counter() - start, error_code)
        if code == 0 and command in ("ADD", "DEL"):
            for listener in self.listeners:
                listener(command, env)
        return code, out


def _metrics_server(address: str, agent: AgentState) -> http.server.ThreadingHTTPServer:
    host, _, port = address.rpartition(":")

    class MetricsHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = agent.metrics.render(
                sum(1 for _ in records.all_records()), state.pool_usage()
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), MetricsHandler)
    server.daemon_threads = True
    return server


def _systemd_listen_fd() -> int | None:
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        return 3
    return None


def run_agent(
    socket_path: str, metrics_address: str | None, kube: KubeOptions | None = None
) -> int:
    """Reconcile, then serve until SIGTERM/SIGINT; with ``kube``, run the Kubernetes
    controller too (imported only then: plugin mode never loads the Kubernetes client)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(ContainerFilter())
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s loxi-cni-agent cid=%(container)s %(message)s"
            )
        )
    logging.getLogger().setLevel(logging.INFO)
    agent = AgentState(Metrics(), package_version())
    report = state.reconcile()
    log.info(
        "reconciled: kept %d, released %d, orphan veths deleted %d, failed %d",
        report.kept,
        len(report.released),
        len(report.orphan_veths),
        len(report.failed),
    )
    server = AgentServer(socket_path, agent, _systemd_listen_fd())
    metrics = _metrics_server(metrics_address, agent) if metrics_address else None
    if kube is not None:
        from loxicni.k8s.controller import Controller

        controller = Controller.from_options(kube, server.reaper)
        server.listeners.append(controller.attachment_changed)
        agent.sections["kubernetes"] = controller.status
        controller.start()
    if metrics is not None:
        threading.Thread(target=metrics.serve_forever, name="metrics", daemon=True).start()

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving on %s (metrics: %s)", socket_path, metrics_address or "off")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if metrics is not None:
            metrics.shutdown()
        if _systemd_listen_fd() is None and os.path.exists(socket_path):
            os.unlink(socket_path)
    return 0
