"""The thin client: forward one CNI call to the node agent over its unix socket.

This module is the whole start-up path of plugin mode when an agent runs, so it imports only
``_socket``, ``os`` and ``loxicni.base`` (``socket`` costs ~5 ms, ``json`` ~2.5 ms) and never
decodes the config. The pod's netns is opened here and passed as a file descriptor, so the
agent never needs to see the runtime's netns path (which a DaemonSet pod may not).
"""

from __future__ import annotations

import _socket
import os
import time  # built in: costs nothing to import

from loxicni.base import paths, wire

DEFAULT_TIMEOUT = 120.0  # bounded: a dead or wedged agent never hangs the runtime
CONNECT_TIMEOUT = 5.0


class AgentUnavailable(Exception):
    """Nothing usable listens on the socket: the caller runs the request in-process."""


class AgentLost(Exception):
    """The agent took the request but gave no answer (crash, timeout)."""


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
    except (OSError, ValueError):
        return None  # the agent reports the missing netns


def _timeout() -> float:
    try:
        return float(os.environ.get("LOXI_CNI_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


def _time_left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def call_agent(
    env: dict[str, str], stdin: bytes, path: str | None = None, timeout: float | None = None
) -> tuple[int, bytes]:
    """Send one request; return (exit code, stdout). AgentUnavailable before anything is sent."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path or paths.socket_path())
        except OSError as exc:
            raise AgentUnavailable(str(exc)) from exc
        # One deadline for the whole exchange, not per recv: a trickling agent is a wedged one.
        deadline = time.monotonic() + (timeout or _timeout())
        payload = wire.encode_request(env, stdin)
        fd = _netns_fd(env)
        try:
            try:
                sock.settimeout(_time_left(deadline))
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
            sock.settimeout(_time_left(deadline))
            code, length = wire.response_header(_recv_exact(sock, wire.RESPONSE_HEAD))
            sock.settimeout(_time_left(deadline))
            return code, _recv_exact(sock, length)
        except (OSError, wire.FrameError) as exc:  # includes timeouts
            raise AgentLost(str(exc)) from exc
    finally:
        sock.close()


def cni_version_of(stdin: bytes) -> str:
    """The config's cniVersion, found without a JSON decoder (for error replies only): a
    version string is digits and dots, anything else answers in the latest version."""
    key = stdin.find(b'"cniVersion"')
    if key >= 0:
        start = stdin.find(b'"', stdin.find(b":", key) + 1)
        end = stdin.find(b'"', start + 1)
        if 0 <= start < end and end - start < 16:
            text = stdin[start + 1 : end]
            if text and all(c in b"0123456789." for c in text):
                return text.decode()
    return "1.1.0"


def _json_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def try_again_error(stdin: bytes, why: str) -> bytes:
    """CNI error 11 (try again later) for a request the agent lost."""
    return (
        f'{{"cniVersion":"{cni_version_of(stdin)}","code":11,'
        f'"msg":"loxi-cni agent did not answer; try again","details":{_json_string(why)}}}\n'
    ).encode()


def forward(environ: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Forward a CNI call; AgentUnavailable if no agent listens (run it in-process then)."""
    try:
        return call_agent(wire.forwarded_env(environ), stdin)
    except AgentLost as exc:
        return 1, try_again_error(stdin, str(exc))
