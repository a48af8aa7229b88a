"""Options of the agent's Kubernetes mode (stdlib only: the CLI parses them in any mode)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loxicni.net.overlay import OverlayConfig

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CONF_NAME = "10-loxi-cni.conflist"
DEFAULT_DATA_ROOT = "/var/lib/cni"  # the host-local store's home; the DaemonSet mounts it
# The kubelet normally DELs before it deletes the Pod object; a force-deleted Pod's sandbox is
# torn down a little later. Two minutes leaves the runtime ample time before we step in.
DEFAULT_GRACE_PERIOD = 120.0
DEFAULT_RESYNC = 30.0
# Cross-node modes: "none" leaves other nodes' pods to someone else (the agent watches only its
# own Node); the others are loxicni.net.peers.Mode.
CROSS_NODE_MODES = ("none", "routes", "vxlan", "auto")
DEFAULT_VXLAN_VNI = 1
DEFAULT_VXLAN_PORT = 8472  # the Linux kernel's and flannel's; IANA's is 4789
DEFAULT_VXLAN_DEVICE = "loxi-vxlan"  # + "4" / "6": one device per underlay family


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
    data_root: Path = Path(DEFAULT_DATA_ROOT)  # where the template's ipam.dataDir may be
    grace_period: float = DEFAULT_GRACE_PERIOD
    resync: float = DEFAULT_RESYNC
    network_policy: bool = True  # enforce NetworkPolicy for this node's pods
    cross_node: str = "none"
    vxlan_vni: int = DEFAULT_VXLAN_VNI
    vxlan_port: int = DEFAULT_VXLAN_PORT
    vxlan_device: str = DEFAULT_VXLAN_DEVICE

    def overlay(self) -> OverlayConfig | None:
        """The overlay's settings (None: no cross-node mode); OverlayError if they make no
        sense. Imported here: the net layer is not needed to parse options."""
        if self.cross_node == "none":
            return None
        from loxicni.net.overlay import OverlayConfig
        from loxicni.net.peers import Mode

        return OverlayConfig(
            mode=Mode(self.cross_node),
            vni=self.vxlan_vni,
            port=self.vxlan_port,
            device4=f"{self.vxlan_device}4",
            device6=f"{self.vxlan_device}6",
        )

    @property
    def encapsulates(self) -> bool:
        """Whether pod traffic may cross a vxlan device (and pods need its smaller MTU)."""
        return self.cross_node in ("vxlan", "auto")
