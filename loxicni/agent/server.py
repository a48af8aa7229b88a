"""The CNI socket: serves the thin client's requests with the plugin code already imported.

One thread accepts connections and reads their requests as the bytes arrive, never waiting
on any one client; each request must arrive whole within READ_TIMEOUT of its connection,
counted from the first byte to the last, not per read. A whole request goes to a fixed pool
of WORKERS threads. So a slow or idle client costs a file descriptor, never a worker: a storm
of calls or a flood of idle connections costs a bounded number of threads, and requests that
arrive whole are served whatever else is connected. At most MAX_CONNECTIONS are open at once;
beyond that the oldest connection still sending is dropped (or, when all are being served,
new ones wait in the kernel's backlog).

The socket is root-only twice over: mode 0600, and the peer's credentials (SO_PEERCRED) must
be uid 0. Bad requests (malformed, oversized, a client that vanishes mid-request) get an error
or a closed connection; the agent keeps serving.
"""

from __future__ import annotations

import array
import contextvars
import json
import os
import queue
import selectors
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
from loxicni.base.logs import get_logger, request_log
from loxicni.cni import skel
from loxicni.cni.errors import CniError, Code
from loxicni.net.reaper import LinkReaper
from loxicni.plugin import records
from loxicni.plugin.bridge import BridgePlugin
from loxicni.plugin.config import KNOWN_ARGS

log = get_logger(__name__)

READ_TIMEOUT = 10.0  # a client has this long to send its whole request
WORKERS = 16  # requests served at once; more whole ones wait in a queue
MAX_CONNECTIONS = 256  # open at once: arriving, waiting for a worker, or being served
BACKLOG = 256  # the runtime may send a storm of calls at once
KNOWN_COMMANDS = frozenset({"ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"})

container_id: contextvars.ContextVar[str] = contextvars.ContextVar("container_id", default="-")


class ClientGone(Exception):
    """The client closed the connection mid-request: nobody is left to answer."""


NOT_ROOT = "the loxi-cni agent serves root only"


class _Incoming:
    """One connection's request, read as it arrives without ever blocking, against the
    deadline of its connection."""

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.fds: list[int] = []
        self.buf = bytearray()
        self.need = wire.REQUEST_HEAD  # bytes of the request known to be due so far
        self.env_len: int | None = None
        self.stdin_len: int | None = None

    def receive(self) -> bool:
        """Take what has arrived; True once the request is whole. ClientGone if the client
        closed the connection first, wire.FrameError if the request is not one of ours."""
        while len(self.buf) < self.need:
            try:
                data, ancdata, _flags, _addr = self.conn.recvmsg(
                    min(self.need - len(self.buf), 1 << 20), socket.CMSG_SPACE(4 * 4)
                )
            except (BlockingIOError, InterruptedError):
                return False
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(payload[: len(payload) - len(payload) % 4])
                    self.fds.extend(got)
            if not data:
                raise ClientGone("client closed the connection mid-request")
            self.buf += data
            self._lengths()
        return True

    def _lengths(self) -> None:
        head = wire.REQUEST_HEAD
        if self.env_len is None and len(self.buf) >= head:
            self.env_len = wire.request_env_length(bytes(self.buf[:head]))
            self.need = head + self.env_len + 4
        if self.env_len is not None and self.stdin_len is None and len(self.buf) >= self.need:
            self.stdin_len = wire.stdin_length(bytes(self.buf[self.need - 4 : self.need]))
            self.need += self.stdin_len

    def request(self) -> tuple[dict[str, str], bytes]:
        assert self.env_len is not None
        head = wire.REQUEST_HEAD
        env = wire.decode_env(bytes(self.buf[head : head + self.env_len]))
        return env, bytes(self.buf[head + self.env_len + 4 :])

    def close(self) -> None:
        self.conn.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []


@dataclass
class _Job:
    """A whole request for a worker to serve, or a bad one to refuse (``refusal``)."""

    conn: socket.socket
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    fds: list[int] = field(default_factory=list)
    refusal: tuple[int, str] | None = None


def _refusal(exc: wire.FrameError) -> tuple[int, str]:
    return (Code.INVALID_ENV if exc.part == "env" else Code.DECODE_FAILURE), str(exc)


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


# Told of every ADD and DEL served successfully, before the runtime gets the answer:
# (command, env, the answer's bytes). A listener may wait a little (network policy does, until
# the new pod's filter is in place); most just take note.
AttachmentListener = Callable[[str, dict[str, str], bytes], None]


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
            "attachments": len(scan.held),
            "deletionsPending": scan.deleting,
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
    """Reads requests on the CNI socket in one thread; WORKERS threads serve them."""

    def __init__(self, path: str, agent: AgentState, listen_fd: int | None = None) -> None:
        self.path = path
        self.agent = agent
        self.reaper = LinkReaper()
        self.listeners: list[AttachmentListener] = []
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._stopping = threading.Event()
        self._open = 0  # connections accepted and not closed yet
        self._open_lock = threading.Lock()
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
        self.socket.setblocking(False)
        selector = selectors.DefaultSelector()
        arriving: dict[int, _Incoming] = {}  # by fd, oldest first
        listening = False
        try:
            while not self._stopping.is_set():
                # Full with requests being served: leave new ones in the kernel's backlog.
                room = self._open < MAX_CONNECTIONS or bool(arriving)
                if room != listening:
                    if room:
                        selector.register(self.socket, selectors.EVENT_READ)
                    else:
                        selector.unregister(self.socket)
                    listening = room
                timeout = 0.5 if listening else 0.05
                if arriving:
                    oldest = next(iter(arriving.values()))
                    timeout = min(timeout, max(oldest.deadline - time.monotonic(), 0.0))
                for key, _events in selector.select(timeout):
                    try:
                        if key.fileobj is self.socket:
                            self._accept(selector, arriving)
                        else:
                            self._receive(selector, arriving, key.data)
                    except Exception:  # one connection's trouble must not end the reading
                        log.exception("reading a request failed")
                        broken = key.data
                        if broken is not None and broken in arriving.values():
                            self._drop(selector, arriving, broken)
                now = time.monotonic()
                for incoming in list(arriving.values()):
                    if incoming.deadline > now:
                        break  # oldest first: the rest are younger
                    log.info("connection dropped: request not received in time")
                    self._drop(selector, arriving, incoming)
        finally:
            for incoming in list(arriving.values()):
                self._drop(selector, arriving, incoming)
            selector.close()
            for _ in workers:
                self._queue.put(None)

    def _accept(self, selector: selectors.BaseSelector, arriving: dict[int, _Incoming]) -> None:
        while self._open < MAX_CONNECTIONS or arriving:
            try:
                conn, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: try again shortly
                log.warning("accept failed: %s", exc)
                time.sleep(0.05)
                return
            if self._open >= MAX_CONNECTIONS:
                log.warning("too many connections: dropping the oldest one still sending")
                self._drop(selector, arriving, next(iter(arriving.values())))
            with self._open_lock:
                self._open += 1
            conn.setblocking(False)
            uid = _peer_uid(conn)
            if uid != 0:
                log.warning("refused a request from uid %s", uid)
                self._queue.put(_Job(conn, refusal=(Code.INVALID_ENV, NOT_ROOT)))
                continue
            incoming = _Incoming(conn, time.monotonic() + READ_TIMEOUT)
            arriving[conn.fileno()] = incoming
            selector.register(conn, selectors.EVENT_READ, incoming)

    def _receive(
        self, selector: selectors.BaseSelector, arriving: dict[int, _Incoming], incoming: _Incoming
    ) -> None:
        try:
            if not incoming.receive():
                return
            env, stdin = incoming.request()
        except wire.FrameError as exc:
            log.warning("bad request: %s", exc)
            self._hand_over(
                selector, arriving, incoming, _Job(incoming.conn, refusal=_refusal(exc))
            )
            return
        except (ClientGone, OSError) as exc:
            log.info("connection dropped: %s", exc)
            self._drop(selector, arriving, incoming)
            return
        self._hand_over(selector, arriving, incoming, _Job(incoming.conn, env, stdin, incoming.fds))

    def _hand_over(
        self,
        selector: selectors.BaseSelector,
        arriving: dict[int, _Incoming],
        incoming: _Incoming,
        job: _Job,
    ) -> None:
        selector.unregister(incoming.conn)
        del arriving[incoming.conn.fileno()]
        job.fds = incoming.fds
        incoming.fds = []
        self._queue.put(job)

    def _drop(
        self, selector: selectors.BaseSelector, arriving: dict[int, _Incoming], incoming: _Incoming
    ) -> None:
        selector.unregister(incoming.conn)
        del arriving[incoming.conn.fileno()]
        incoming.close()
        self._closed()

    def _closed(self) -> None:
        with self._open_lock:
            self._open -= 1

    def shutdown(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self.socket.close()
        if not self.activated and os.path.exists(self.path):
            os.unlink(self.path)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._serve(job)
            except Exception:
                log.exception("request handling failed")
            finally:
                job.conn.close()
                for fd in job.fds:
                    os.close(fd)
                self._closed()

    def _serve(self, job: _Job) -> None:
        conn = job.conn
        try:
            conn.setblocking(True)
            if job.refusal is not None:
                _refuse(conn, *job.refusal)
                return
            if wire.ADMIN_KEY in job.env:
                out = (json.dumps(self.agent.status()) + "\n").encode()
                conn.sendall(wire.encode_response(0, out))
                return
            netns_fd = job.fds[0] if job.fds else None
            code, out = self.serve_cni(job.env, job.stdin, netns_fd, lambda: client_gone(conn))
            conn.sendall(wire.encode_response(code, out))
        except OSError as exc:  # the client went away: nothing to answer
            log.info("connection dropped: %s", exc)

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
            with request_log():
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
                listener(command, env, out)
        return code, out
