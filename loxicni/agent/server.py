"""The CNI socket: serves the thin client's requests with the plugin code already imported.

A fixed pool of worker threads takes accepted connections from a queue, so a storm of calls
(or a flood of idle connections) costs a bounded number of threads; each request must arrive
whole within READ_TIMEOUT, counted from its first byte to its last. The socket is root-only
twice over: mode 0600, and the peer's credentials (SO_PEERCRED) must be uid 0. Bad requests
(malformed, oversized, a client that vanishes mid-request) get an error or a closed
connection; the agent keeps serving.
"""

from __future__ import annotations

import array
import contextvars
import json
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loxicni.agent import state
from loxicni.agent.metrics import Metrics
from loxicni.base import wire
from loxicni.base.logs import get_logger
from loxicni.cni import skel
from loxicni.cni.errors import CniError, Code
from loxicni.net.reaper import LinkReaper
from loxicni.plugin import records
from loxicni.plugin.bridge import BridgePlugin
from loxicni.plugin.config import KNOWN_ARGS

log = get_logger(__name__)

READ_TIMEOUT = 10.0  # a client has this long to send its whole request
WORKERS = 16  # concurrent requests; more wait in the accept queue
BACKLOG = 256  # the runtime may send a storm of calls at once
KNOWN_COMMANDS = frozenset({"ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"})

container_id: contextvars.ContextVar[str] = contextvars.ContextVar("container_id", default="-")


class BadRequest(Exception):
    """A request we answer with a CNI error."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


class ClientGone(Exception):
    """The client stopped sending (closed, or too slow): nobody is left to answer."""


class _Reader:
    """Reads a request's bytes (and any fds passed along) against one deadline."""

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.fds: list[int] = []

    def exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise ClientGone("request not received in time")
            self.conn.settimeout(left)
            data, ancdata, _flags, _addr = self.conn.recvmsg(
                min(n - len(buf), 1 << 20), socket.CMSG_SPACE(4 * 4)
            )
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(payload[: len(payload) - len(payload) % 4])
                    self.fds.extend(got)
            if not data:
                raise ClientGone("client closed the connection mid-request")
            buf += data
        return bytes(buf)


def read_request(reader: _Reader) -> tuple[dict[str, str], bytes]:
    """Read one framed request; BadRequest for anything malformed or oversized."""
    try:
        env_len = wire.request_env_length(reader.exact(wire.REQUEST_HEAD))
        env_block = reader.exact(env_len + 4)
        stdin = reader.exact(wire.stdin_length(env_block[env_len:]))
        env = wire.decode_env(env_block[:env_len])
    except wire.FrameError as exc:
        code = Code.INVALID_ENV if exc.part == "env" else Code.DECODE_FAILURE
        raise BadRequest(code, str(exc)) from exc
    return env, stdin


def _error_bytes(code: int, msg: str) -> bytes:
    return (json.dumps(CniError(code, msg).to_json("1.1.0")) + "\n").encode()


def _refuse(conn: socket.socket, code: int, msg: str) -> None:
    """Answer a bad request, then drain a little of what the client still sends: closing
    with unread data makes the kernel reset the connection and drop the answer."""
    conn.sendall(wire.encode_response(1, _error_bytes(code, msg)))
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(1.0)
    drained = 0
    while drained < wire.MAX_ENV:
        chunk = conn.recv(65536)
        if not chunk:
            break
        drained += len(chunk)


def client_gone(conn: socket.socket) -> bool:
    """Has the client hung up (it timed out, or died)? It sends nothing after its request,
    so a readable connection means end of file, or a reset."""
    try:
        return not conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# Told of every ADD and DEL served successfully: (command, env).
AttachmentListener = Callable[[str, dict[str, str]], None]


@dataclass
class AgentState:
    metrics: Metrics
    version: str
    # More sections of the status answer, e.g. "kubernetes" in Kubernetes mode.
    sections: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        scan = records.scan()
        out: dict[str, Any] = {
            "agent": "up",
            "version": self.version,
            "pid": os.getpid(),
            "uptimeSeconds": round(time.time() - self.metrics.started, 3),
            "requestsServed": self.metrics.served(),
            "attachments": len(scan.records),
            "addressesInUse": state.addresses_per_network(scan),
            "quarantined": [f"{bad.key}: {bad.why}" for bad in scan.unreadable],
        }
        for name, section in self.sections.items():
            try:
                out[name] = section()
            except Exception as exc:  # a report must not take the liveness probe down
                out[name] = {"error": str(exc)}
        return out


class AgentServer:
    """Accepts on the CNI socket; WORKERS threads serve the accepted connections."""

    def __init__(self, path: str, agent: AgentState, listen_fd: int | None = None) -> None:
        self.path = path
        self.agent = agent
        self.reaper = LinkReaper()
        self.listeners: list[AttachmentListener] = []
        self._queue: queue.Queue[socket.socket | None] = queue.Queue()
        self._stopping = threading.Event()
        self.activated = listen_fd is not None
        if listen_fd is not None:  # systemd socket activation: the socket is ready-made
            self.socket = socket.socket(fileno=listen_fd)
        else:
            self.socket = self._bind(path)

    @staticmethod
    def _bind(path: str) -> socket.socket:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)  # a stale socket of a previous agent
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
        return sock

    def serve_forever(self) -> None:
        workers = [
            threading.Thread(target=self._work, name=f"cni-worker-{i}", daemon=True)
            for i in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        self.socket.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                conn, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                log.warning("accept failed: %s", exc)
                time.sleep(0.05)
                continue
            self._queue.put(conn)
        for _ in workers:
            self._queue.put(None)

    def shutdown(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self.socket.close()
        if not self.activated and os.path.exists(self.path):
            os.unlink(self.path)

    def _work(self) -> None:
        while True:
            conn = self._queue.get()
            if conn is None:
                return
            try:
                self.handle(conn)
            except Exception:
                log.exception("request handling failed")
            finally:
                conn.close()

    def handle(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        reader = _Reader(conn, time.monotonic() + READ_TIMEOUT)
        try:
            uid = _peer_uid(conn)
            if uid != 0:
                log.warning("refused a request from uid %s", uid)
                _refuse(conn, Code.INVALID_ENV, "the loxi-cni agent serves root only")
                return
            try:
                env, stdin = read_request(reader)
            except BadRequest as exc:
                log.warning("bad request: %s", exc)
                _refuse(conn, exc.code, str(exc))
                return
            conn.settimeout(None)
            if wire.ADMIN_KEY in env:
                out = (json.dumps(self.agent.status()) + "\n").encode()
                conn.sendall(wire.encode_response(0, out))
                return
            netns_fd = reader.fds[0] if reader.fds else None
            code, out = self.serve_cni(env, stdin, netns_fd, lambda: client_gone(conn))
            conn.sendall(wire.encode_response(code, out))
        except (OSError, ClientGone) as exc:  # the client went away: nothing to answer
            log.info("connection dropped: %s", exc)
        finally:
            for fd in reader.fds:
                os.close(fd)

    def serve_cni(
        self,
        env: dict[str, str],
        stdin: bytes,
        netns_fd: int | None,
        abandoned: Callable[[], bool] | None = None,
    ) -> tuple[int, bytes]:
        command = env.get("CNI_COMMAND", "")
        token = container_id.set(env.get("CNI_CONTAINERID") or "-")
        start = time.perf_counter()
        try:
            plugin = BridgePlugin(
                netns_fd=netns_fd, reaper=self.reaper, require_fd=True, abandoned=abandoned
            )
            code, out = skel.run(plugin, env, stdin, KNOWN_ARGS)
        finally:
            container_id.reset(token)
        error_code = 0
        if code:
            try:
                error_code = int(json.loads(out)["code"])
            except (ValueError, KeyError, TypeError):
                error_code = Code.INTERNAL
        label = command if command in KNOWN_COMMANDS else "other"
        self.agent.metrics.observe(label, time.perf_counter() - start, error_code)
        if code == 0 and command in ("ADD", "DEL"):
            for listener in self.listeners:
                listener(command, env)
        return code, out
