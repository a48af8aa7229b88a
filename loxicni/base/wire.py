"""The framing between the ``loxi-cni`` executable and the node agent, both directions.

  request:  b"LXC1" | u32 len | env (NUL-separated KEY=VALUE) | u32 len | stdin  [+ netns fd]
  response: b"LXR1" | u32 exit code | u32 len | stdout

Integers are big-endian. The pod's netns travels as an SCM_RIGHTS file descriptor with the
first bytes of the request, so the agent never needs to see the runtime's netns path.
Standard library only (not even ``struct``): the thin client imports this on every call, and a
compiled client speaks the same bytes.
"""

from __future__ import annotations

REQUEST_MAGIC = b"LXC1"
RESPONSE_MAGIC = b"LXR1"
REQUEST_HEAD = 8  # magic + env length
RESPONSE_HEAD = 12  # magic + exit code + stdout length
MAX_ENV = 64 * 1024
MAX_STDIN = 4 * 1024 * 1024
# The environment a client forwards: the CNI contract plus our own log knobs.
FORWARDED_PREFIXES = ("CNI_", "LOXI_CNI_LOG")
# An admin request (``loxi-cni status``) carries this key instead of a CNI command.
ADMIN_KEY = "LOXI_ADMIN"


class FrameError(ValueError):
    """A frame that is not ours, or over a limit; ``part`` says where: "frame", "env" or
    "stdin"."""

    def __init__(self, msg: str, part: str = "frame") -> None:
        super().__init__(msg)
        self.part = part


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def read_u32(data: bytes, offset: int = 0) -> int:
    return int.from_bytes(data[offset : offset + 4], "big")


def forwarded_env(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES)}


def encode_request(env: dict[str, str], stdin: bytes) -> bytes:
    env_block = b"\0".join(f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in env.items())
    return REQUEST_MAGIC + u32(len(env_block)) + env_block + u32(len(stdin)) + stdin


def request_env_length(head: bytes) -> int:
    """The env length of a request's first REQUEST_HEAD bytes; FrameError if not ours."""
    if head[:4] != REQUEST_MAGIC:
        raise FrameError("not a loxi-cni request")
    n = read_u32(head, 4)
    if n > MAX_ENV:
        raise FrameError(f"environment of {n} bytes exceeds {MAX_ENV}", "env")
    return n


def stdin_length(raw: bytes) -> int:
    n = read_u32(raw)
    if n > MAX_STDIN:
        raise FrameError(f"config of {n} bytes exceeds {MAX_STDIN}", "stdin")
    return n


def decode_env(block: bytes) -> dict[str, str]:
    """KEY=VALUE pairs; bytes that are not UTF-8 are kept as surrogates, never refused here
    (the CNI layer judges the values)."""
    env: dict[str, str] = {}
    for item in block.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.decode("utf-8", "surrogateescape").partition("=")
        if not sep:
            raise FrameError("malformed environment entry", "env")
        env[key] = value
    return env


def encode_response(code: int, out: bytes) -> bytes:
    return RESPONSE_MAGIC + u32(code) + u32(len(out)) + out


def response_header(head: bytes) -> tuple[int, int]:
    """(exit code, stdout length) of a response's first RESPONSE_HEAD bytes."""
    if head[:4] != RESPONSE_MAGIC:
        raise FrameError("the agent answered in an unknown format")
    return read_u32(head, 4), read_u32(head, 8)
