"""Host-side veth names of our own scheme: ``<vethPrefix><hash>``, 15 characters.

The name is derived from (network, container ID, ifname), so CHECK and DEL find it again
without state; the link's alias records the attachment, so a name taken by someone else is
never mistaken for ours (on a collision the next candidate is used).
"""

from __future__ import annotations

import hashlib

from loxicni.plugin.config import IFNAMSIZ

CANDIDATES = 8
ALIAS_PREFIX = "loxi-cni"


def alias(network: str, container_id: str, ifname: str) -> str:
    """IFLA_IFALIAS of a host veth: identifies its attachment (names hold no spaces)."""
    return f"{ALIAS_PREFIX} {network} {container_id} {ifname}"


def parse_alias(text: str) -> tuple[str, str, str] | None:
    """(network, container ID, ifname) from an alias we wrote, else None."""
    parts = text.split(" ")
    if len(parts) != 4 or parts[0] != ALIAS_PREFIX:
        return None
    return parts[1], parts[2], parts[3]


def candidates(prefix: str, network: str, container_id: str, ifname: str) -> list[str]:
    """Host veth names to try, in order."""
    width = IFNAMSIZ - len(prefix)
    out = []
    for salt in range(CANDIDATES):
        digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}\0{salt}".encode()).hexdigest()
        out.append(prefix + digest[:width])
    return out
