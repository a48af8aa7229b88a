"""Names derived from an attachment's identity (network, container ID, ifname).

- The attachment key names its lock and its record.
- Host veth names follow our scheme ``<vethPrefix><hash>``, 15 characters, so CHECK and DEL
  find them again without state; the link's alias records the attachment, so a name taken by
  someone else is never mistaken for ours (on a collision the next candidate is used).
"""

from __future__ import annotations

from loxicni.base.digest import sha256_hex
from loxicni.cni.names import IFNAME_MAX_BYTES

CANDIDATES = 8
ALIAS_PREFIX = "loxi-cni"


def attachment_key(network: str, container_id: str, ifname: str) -> str:
    """A file-name-safe key, the same for every call about one attachment."""
    ident = f"{network}\0{container_id}\0{ifname}".encode("utf-8", "surrogateescape")
    return sha256_hex(ident)[:32]


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
    width = IFNAME_MAX_BYTES - len(prefix)
    out = []
    for salt in range(CANDIDATES):
        ident = f"{network}\0{container_id}\0{ifname}\0{salt}".encode("utf-8", "surrogateescape")
        out.append(prefix + sha256_hex(ident)[:width])
    return out
