"""Sysctls, read before written so a value already set costs no write.

A value found set is trusted for RECHECK seconds (per netns): every ADD asks for forwarding,
and two /proc reads per call are a measurable part of the agent's ADD. Someone turning it
off is corrected by the next ADD after that.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_SYS = Path("/proc/sys")
RECHECK = 10.0

_seen: dict[tuple[int, str], tuple[str, float]] = {}  # (netns inode, key) -> (value, when)


def ensure(key: str, value: str) -> None:
    """Set ``net/ipv4/ip_forward``-style ``key`` to ``value`` in the caller's netns."""
    where = (os.stat("/proc/thread-self/ns/net").st_ino, key)
    now = time.monotonic()
    known = _seen.get(where)
    if known is not None and known[0] == value and now - known[1] < RECHECK:
        return
    path = PROC_SYS / key
    if path.read_text().strip() != value:
        path.write_text(value)
    _seen[where] = (value, now)


def forwarding_on(ipv4: bool, ipv6: bool) -> None:
    """Let the host route for the pods it is gateway of."""
    if ipv4:
        ensure("net/ipv4/ip_forward", "1")
    if ipv6:
        ensure("net/ipv6/conf/all/forwarding", "1")
