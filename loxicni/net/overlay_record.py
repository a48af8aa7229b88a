"""What this node's overlay was made with, kept in the state dir.

The kernel keeps the overlay (routes, vxlan devices) when the agent stops: that is what keeps
the pods' flows alive across a restart. So the agent writes down the settings it programs
with, and whoever comes later can remove exactly that: an agent started with other device
names, another route protocol or table, or no cross-node mode at all; and ``loxi-cni
teardown``, which knows nothing of how the agent was run.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from dataclasses import asdict

from loxicni.base import files, paths
from loxicni.net.overlay import OverlayConfig
from loxicni.net.peers import Mode

_VERSION = 1


def save(config: OverlayConfig) -> None:
    """Record ``config`` (written only when it differs from the record)."""
    data = {"version": _VERSION, **asdict(config), "mode": str(config.mode)}
    text = json.dumps(data, sort_keys=True).encode()
    path = paths.overlay_record()
    with suppress(OSError), open(path, "rb") as f:
        if f.read() == text:
            return
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    files.write_atomic(path, text, sync=True)


def load() -> OverlayConfig | None:
    """The recorded settings; None without a record, or with one that cannot be read (its
    overlay is then found by the default settings, if at all)."""
    try:
        with open(paths.overlay_record(), "rb") as f:
            data = json.loads(f.read())
        return OverlayConfig(
            mode=Mode(data["mode"]),
            vni=int(data["vni"]),
            port=int(data["port"]),
            protocol=int(data["protocol"]),
            table=int(data["table"]),
            device4=str(data["device4"]),
            device6=str(data["device6"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget() -> None:
    with suppress(FileNotFoundError):
        os.unlink(paths.overlay_record())


def left_behind(recorded: OverlayConfig | None, current: OverlayConfig | None) -> bool:
    """Would running ``current`` (None: no overlay) leave what ``recorded`` made in place?
    Its routes are found by protocol and table, its devices by name: a change of any of
    them, or no overlay at all, leaves the old ones to remove."""
    if recorded is None:
        return False
    if current is None:
        return True
    return (recorded.protocol, recorded.table, recorded.device4, recorded.device6) != (
        current.protocol,
        current.table,
        current.device4,
        current.device6,
    )
