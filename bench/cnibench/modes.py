"""A mode: one plugin set-up with its own bridge, network, subnet and dirs."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agent import Agent
from .settings import CNI_VERSION, TITLES


@dataclass
class Mode:
    """One plugin set-up: its own bridge, network, subnet, dataDir (and run dir for ours)."""

    key: str
    plugin: str
    cni_path: str
    network: str
    bridge: str
    subnet: ipaddress.IPv4Network
    data_dir: Path
    private_dirs: list[Path] = field(default_factory=list)  # ours: run dir, state dir
    extra_env: dict[str, str] = field(default_factory=dict)
    agent: Agent | None = None
    baseline: set[Path] = field(default_factory=set)  # files in private_dirs after warm-up
    requests: int = 0  # sent to the agent since warm-up
    agent_cpu0: float = 0.0
    served0: int | None = None

    @property
    def title(self) -> str:
        return TITLES[self.key]

    def conf(self) -> dict[str, Any]:
        return {
            "cniVersion": CNI_VERSION,
            "name": self.network,
            "type": "bridge" if self.key == "ref" else "loxi-cni",
            "bridge": self.bridge,
            "isGateway": True,
            "ipam": {
                "type": "host-local",
                "subnet": str(self.subnet),
                "dataDir": str(self.data_dir),
            },
        }
