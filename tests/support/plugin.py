"""The installed plugin under test (``LOXI_CNI_BIN``, else the default install) and its agent."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

PLUGIN = os.environ.get("LOXI_CNI_BIN", "/opt/cni/bin/loxi-cni")


def agent_status(socket: str) -> dict[str, Any]:
    """``loxi-cni status --json`` for the agent on ``socket``; ValueError if it printed no JSON."""
    proc = subprocess.run(
        [PLUGIN, "status", "--json", "--socket", socket],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return dict(json.loads(proc.stdout))
