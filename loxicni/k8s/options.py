"""Options of the agent's Kubernetes mode (stdlib only: the CLI parses them in any mode)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CONF_NAME = "10-loxi-cni.conflist"
# The kubelet normally DELs before it deletes the Pod object; a force-deleted Pod's sandbox is
# torn down a little later. Two minutes leaves the runtime ample time before we step in.
DEFAULT_GRACE_PERIOD = 120.0
DEFAULT_RESYNC = 30.0


def default_node_name() -> str:
    """NODE_NAME (the DaemonSet sets it from spec.nodeName), else the host name."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass(frozen=True)
class KubeOptions:
    node_name: str
    kubeconfig: str | None = None  # None: in-cluster (the pod's ServiceAccount)
    conf_dir: Path | None = Path(DEFAULT_CONF_DIR)  # None: leave the CNI config alone
    conf_name: str = DEFAULT_CONF_NAME
    conf_template: Path | None = None  # None: the built-in template
    grace_period: float = DEFAULT_GRACE_PERIOD
    resync: float = DEFAULT_RESYNC
    network_policy: bool = True  # enforce NetworkPolicy for this node's pods
