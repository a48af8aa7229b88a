"""Finding the host ends of our veth pairs: by name candidates, or by alias over a dump.

A host veth is ours, for one attachment, exactly when its alias names that attachment; a link
merely wearing one of our candidate names is someone else's.
"""

from __future__ import annotations

from loxicni.net import links
from loxicni.net.rtnl import Rtnl
from loxicni.plugin import naming


def find(
    host: Rtnl, prefix: str, network: str, container_id: str, ifname: str, hint: str = ""
) -> list[links.Link]:
    """The host veths of one attachment (normally one; more only after a crash mid-ADD).

    ``hint``: the name the attachment's record gives; if that link is ours, it is the one
    (one request instead of one per candidate). Otherwise every candidate name is looked at:
    a free earlier candidate does not mean a later one is not ours (its holder may have gone
    since we took the later one)."""
    alias = naming.alias(network, container_id, ifname)
    if hint:
        link = links.get(host, hint)
        if link is not None and link.alias == alias:
            return [link]
    found = []
    for name in naming.candidates(prefix, network, container_id, ifname):
        link = links.get(host, name)
        if link is not None and link.alias == alias:
            found.append(link)
    return found


def by_attachment(
    host: Rtnl, networks: set[str] | None = None
) -> dict[tuple[str, str, str], list[links.Link]]:
    """Every host veth of ours, by (network, container ID, ifname), from one link dump;
    only the given networks when ``networks`` is set."""
    out: dict[tuple[str, str, str], list[links.Link]] = {}
    for link in links.dump(host):
        owner = naming.parse_alias(link.alias)
        if owner is not None and (networks is None or owner[0] in networks):
            out.setdefault(owner, []).append(link)
    return out
