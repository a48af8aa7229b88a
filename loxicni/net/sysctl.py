"""Sysctls, read before written so a value already set costs no write."""

from __future__ import annotations

from pathlib import Path

from loxicni.base import paths


def ensure(key: str, value: str) -> None:
    """Set ``net/ipv4/ip_forward``-style ``key`` to ``value`` in the caller's netns."""
    path = Path(paths.proc_sys()) / key
    if path.read_text().strip() != value:
        path.write_text(value)


def forwarding_on(ipv4: bool, ipv6: bool) -> None:
    """Let the host route for the pods it is gateway of."""
    if ipv4:
        ensure("net/ipv4/ip_forward", "1")
    if ipv6:
        ensure("net/ipv6/conf/all/forwarding", "1")
