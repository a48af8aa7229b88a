"""What a complete DEL must not leave behind, and the check that nothing was."""

from __future__ import annotations

import hashlib
from collections.abc import Set
from pathlib import Path

from .errors import BenchError
from .host import bridge_ports, links
from .modes import Mode
from .settings import HOST_DIRS, IFNAME


def leftovers(mode: Mode) -> list[str]:
    """What a complete DEL of every attachment must not leave: reservations, index entries or
    other files in the dataDir, ports on the bridge, our veths anywhere, files in our run dir."""
    found: list[str] = []
    net_dir = mode.data_dir / mode.network
    for path in sorted(mode.data_dir.rglob("*")):
        if path.is_dir():
            continue
        if path.parent == net_dir and (
            path.name == "lock" or path.name.startswith("last_reserved_ip.")
        ):
            continue
        found.append(f"file {path}")
    found += [f"veth {p} on bridge {mode.bridge}" for p in bridge_ports(mode.bridge)]
    mark = f"loxi-cni {mode.network} "
    found += [
        f"veth {link['ifname']} (alias {link['ifalias']!r})"
        for link in links()
        if str(link.get("ifalias", "")).startswith(mark) and link.get("master") != mode.bridge
    ]
    found += [f"file {p}" for p in private_files(mode) - mode.baseline]
    return found


def private_files(mode: Mode) -> set[Path]:
    """Regular files in our run and state dirs (sockets excluded: the agent's own is expected)."""
    return {p for d in mode.private_dirs for p in d.rglob("*") if p.is_file()}


def check_clean(mode: Mode, when: str) -> None:
    found = leftovers(mode)
    if found:
        raise BenchError(
            f"{mode.title}: after {when}, {len(found)} thing(s) left behind:\n  "
            + "\n  ".join(found[:10])
        )


def check_host_dirs(made: Set[tuple[str, str]]) -> None:
    """Nothing of ours in the host's loxi-cni dirs: the plugin must have honoured our private
    LOXI_CNI_RUN_DIR / LOXI_CNI_STATE_DIR (names there are sha256(network, container, ifname)).

    ``made``: (network, container ID) of every attachment of the run.
    """
    keys = {
        hashlib.sha256(f"{net}\0{cid}\0{IFNAME}".encode()).hexdigest()[:32] for net, cid in made
    }
    ours = [
        path
        for top in HOST_DIRS
        for path in Path(top).rglob("*")
        if path.name.lstrip(".").split(".")[0] in keys
    ]
    if ours:
        raise BenchError(
            f"{len(ours)} file(s) of this run in the host's dirs: " + ", ".join(map(str, ours[:5]))
        )
