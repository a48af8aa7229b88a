"""The naming rules of the CNI contract: network names and interface names.

The network-name rule is libcni's; it also keeps a name a single path component, which the
host-local store and our state rely on. The interface-name rule is the kernel's, counted in
bytes as the kernel counts them (IFNAMSIZ), with the spec's extra refusals.
"""

from __future__ import annotations

import re

_NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
IFNAME_MAX_BYTES = 15  # IFNAMSIZ (16) minus the kernel's NUL terminator


def valid_network_name(name: str) -> bool:
    return _NETWORK_NAME.fullmatch(name) is not None


def is_utf8(text: str) -> bool:
    """False if ``text`` holds a lone surrogate: bytes that were not UTF-8 (``os.environ``
    keeps them so), or a JSON ``\\udcxx`` escape. Neither can be written back out as text, in
    a result, a record or a log line, as it came in."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def byte_len(text: str) -> int:
    """Length as the kernel counts it: the bytes the runtime put in the environment (which
    ``os.environ`` decoded with surrogateescape) or the config's UTF-8."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))


def ifname_problem(name: str) -> str | None:
    """Why ``name`` cannot be a link name, or None if it can."""
    if not name:
        return "is empty"
    if not is_utf8(name):
        return "is not valid UTF-8"
    if byte_len(name) > IFNAME_MAX_BYTES:
        return f"is too long: at most {IFNAME_MAX_BYTES} bytes"
    if name in (".", ".."):
        return f"must not be {name!r}"
    if any(c in "/:" or c.isspace() for c in name):
        return "contains '/', ':' or whitespace"
    return None
