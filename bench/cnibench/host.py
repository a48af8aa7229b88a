"""The host around the plugins: set-up commands, links, pod netns, what machine this is."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from typing import Any

from .errors import BenchError


def sh(*cmd: str, stdin: bytes | None = None, check: bool = True) -> str:
    """Run a setup/check command (never timed); its failure is a bench failure."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=120)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.decode().strip()}")
    return proc.stdout.decode()


def links() -> list[dict[str, Any]]:
    return list(json.loads(sh("ip", "-j", "link", "show") or "[]"))


def bridge_ports(bridge: str) -> list[str]:
    """Host interfaces enslaved to ``bridge`` (a leftover veth shows up here)."""
    return [link["ifname"] for link in links() if link.get("master") == bridge]


def make_netns(names: Sequence[str]) -> None:
    if names:
        sh("ip", "-batch", "-", stdin="".join(f"netns add {n}\n" for n in names).encode())


def delete_netns(names: Sequence[str]) -> None:
    if names:
        sh(
            "ip",
            "-force",
            "-batch",
            "-",
            stdin="".join(f"netns del {n}\n" for n in names).encode(),
            check=False,
        )


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores (nproc), kernel {platform.release()}, {cpu}"


def versions(plugin: str) -> str:
    ref = sh("dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins", check=False)
    ours = sh(plugin, "version", check=False).strip() or "loxi-cni (version unknown)"
    return (
        f"reference: Debian containernetworking-plugins {ref or '?'} (bridge, host-local); {ours}"
    )
