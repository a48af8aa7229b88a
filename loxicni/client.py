"""The thin client: forward one CNI call to the node agent over its unix socket.

This module is the whole start-up path of plugin mode when an agent runs, so it imports only
``_socket`` and ``os`` (``socket`` costs ~5 ms, ``json`` ~2.5 ms) and never decodes the config.
The pod's netns is opened here and passed as a file descriptor (SCM_RIGHTS), so the agent
never needs to see the runtime's netns path (which a DaemonSet pod may not).

Wire format, both directions length-prefixed (big-endian u32):
  request:  b"LXC1" | len | env (NUL-separated KEY=VALUE) | len | stdin   [+ netns fd]
  response: b"LXR1" | exit code | len | stdout
"""

from __future__ import annotations

import _socket
import os

REQUEST_MAGIC = b"LXC1"
RESPONSE_MAGIC = b"LXR1"
DEFAULT_SOCKET = "/run/loxi-cni/agent.sock"
DEFAULT_TIMEOUT = 120.0  # bounded: a dead or wedged agent never hangs the runtime
# Environment forwarded to the agent: the CNI contract plus our own knobs.
FORWARDED_PREFIXES = ("CNI_", "LOXI_CNI_LOG")


class AgentUnavailable(Exception):
    """Nothing usable listens on the socket: the caller runs the request in-process."""


class AgentLost(Exception):
    """The agent took the request but gave no answer (crash, timeout)."""


def socket_path() -> str:
    return os.environ.get("LOXI_CNI_SOCKET") or DEFAULT_SOCKET


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def encode_request(env: dict[str, str], stdin: bytes) -> bytes:
    env_block = b"\0".join(f"{k}={v}".encode() for k, v in env.items())
    return REQUEST_MAGIC + _u32(len(env_block)) + env_block + _u32(len(stdin)) + stdin


def _recv_exact(sock: _socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise AgentLost("the agent closed the connection before answering")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _netns_fd(env: dict[str, str]) -> int | None:
    path = env.get("CNI_NETNS")
    if not path:
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # the agent opens the path itself and reports the error


def call_agent(
    env: dict[str, str], stdin: bytes, path: str | None = None, timeout: float | None = None
) -> tuple[int, bytes]:
    """Send one request; return (exit code, stdout). AgentUnavailable before anything is sent."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        try:
            sock.connect(path or socket_path())
        except OSError as exc:
            raise AgentUnavailable(str(exc)) from exc
        sock.settimeout(timeout or float(os.environ.get("LOXI_CNI_TIMEOUT", DEFAULT_TIMEOUT)))
        payload = encode_request(env, stdin)
        fd = _netns_fd(env)
        try:
            try:
                if fd is None:
                    sock.sendall(payload)
                else:
                    rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, "little"))]
                    sent = sock.sendmsg([payload], rights)
                    if sent < len(payload):
                        sock.sendall(payload[sent:])
            finally:
                if fd is not None:
                    os.close(fd)
            header = _recv_exact(sock, 12)
        except OSError as exc:  # includes timeouts
            raise AgentLost(str(exc)) from exc
        if header[:4] != RESPONSE_MAGIC:
            raise AgentLost("the agent answered in an unknown format")
        code = int.from_bytes(header[4:8], "big")
        try:
            out = _recv_exact(sock, int.from_bytes(header[8:12], "big"))
        except OSError as exc:
            raise AgentLost(str(exc)) from exc
        return code, out
    finally:
        sock.close()


def cni_version_of(stdin: bytes) -> str:
    """The config's cniVersion, found without a JSON decoder (for error replies only)."""
    key = stdin.find(b'"cniVersion"')
    if key >= 0:
        start = stdin.find(b'"', stdin.find(b":", key) + 1)
        end = stdin.find(b'"', start + 1)
        if 0 <= start < end and end - start < 16:
            return stdin[start + 1 : end].decode(errors="replace")
    return "1.1.0"


def try_again_error(stdin: bytes, why: str) -> bytes:
    """CNI error 11 (try again later) for a request the agent lost."""
    why = why.replace("\\", "\\\\").replace('"', '\\"')
    version = cni_version_of(stdin)
    return (
        f'{{"cniVersion":"{version}","code":11,"msg":"loxi-cni agent did not answer; '
        f'try again","details":"{why}"}}\n'
    ).encode()


def forward(environ: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Forward a CNI call; AgentUnavailable if no agent listens (run it in-process then)."""
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES)}
    try:
        return call_agent(env, stdin)
    except AgentLost as exc:
        return 1, try_again_error(stdin, str(exc))
