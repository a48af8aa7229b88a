"""The host's network and resources as tests find them: links, routes, free ports, cgroups."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .processes import sh

# Subnets suites use as fixed values: a subnet picked at run time must never be one of these.
TAKEN_SUBNETS = {ipaddress.ip_network("10.99.0.0/24"), ipaddress.ip_network("10.244.1.0/24")}


def links() -> list[dict[str, Any]]:
    """``ip -d -j link``: every link of the host netns."""
    result: list[dict[str, Any]] = json.loads(sh(["ip", "-d", "-j", "link", "show"]).stdout)
    return result


def delete_links(*names: str) -> None:
    """Delete host links by name, best effort (gone already is fine): clean-up after a test."""
    for name in names:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)


def unrouted(candidates: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network | None:
    """The first of ``candidates`` that overlaps no IPv4 route of the host (any table) and none
    of TAKEN_SUBNETS: a subnet a test can give pods without shadowing anything of the host's."""
    routes = json.loads(sh(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout)
    used = set(TAKEN_SUBNETS)
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default" and dst[0].isdigit():
            used.add(ipaddress.ip_network(dst, strict=False))
    return next((c for c in candidates if not any(c.overlaps(u) for u in used)), None)


def free_port() -> int:
    """A loopback port free right now (the kernel's choice, so parallel runs do not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def remove_cgroup(parent: str) -> None:
    """rmdir the cgroup ``parent`` (and what is below it) in every hierarchy, deepest first.

    Best effort: a cgroup still holding processes stays, for its owner's clean-up.
    """
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent.strip("/")
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def flock_waited_on(path: Path) -> bool:
    """Does some process wait for the flock of ``path`` (a "->" line of /proc/locks)? Lets a
    test know a call it started is blocked exactly there."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return False
    waiting = re.compile(rf"^\d+: -> FLOCK\s+\S+\s+\S+\s+\d+\s+[0-9a-f]+:[0-9a-f]+:{inode} ", re.M)
    return bool(waiting.search(Path("/proc/locks").read_text()))
