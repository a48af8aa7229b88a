"""Network configs more than one suite feeds the plugin."""

from __future__ import annotations

from typing import Any


def design_notes_conf(
    name: str = "loxilight_cni", bridge: str = "hsvlan100", **ipam: Any
) -> dict[str, Any]:
    """The config of the design notes (DEVELOPERS.md): CNI 0.2.0, VLAN 100, a gateway on a
    /24 with a route to 10/8; ``ipam`` adds to its ipam section (a dataDir, say)."""
    return {
        "cniVersion": "0.2.0",
        "name": name,
        "type": "loxi-cni",
        "bridge": bridge,
        "isGateway": True,
        "isDefaultGateway": False,
        "mtu": 1500,
        "hairpinMode": False,
        "promiscMode": False,
        "vlanID": 100,
        "ipam": {
            "type": "host-local",
            "subnet": "10.244.1.0/24",
            "routes": [{"dst": "10.0.0.0/8"}],
            **ipam,
        },
    }
