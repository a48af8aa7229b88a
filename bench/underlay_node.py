"""The node the cross-node benches program: a network namespace whose underlay veth holds
10.0.0.1/16 and fd00:50::1/64, so every peer they invent (10.0.i.j, fd00:50::i) is one hop
away and ``routes`` reaches them too. One copy, so both benches measure the same node."""

from __future__ import annotations

import subprocess
import uuid

from loxicni.net import netns

UNDERLAY = (
    "link set lo up\nlink add eth0 type veth peer name eth1\n"
    "link set eth0 up\nlink set eth1 up\n"
    "addr add 10.0.0.1/16 dev eth0\naddr add fd00:50::1/64 dev eth0 nodad\n"
)


def underlay_netns(prefix: str) -> tuple[str, int]:
    """A new netns ``prefix-<random>`` with the underlay: its name and an open fd of it (the
    caller closes the fd and deletes the netns; here only if the set-up fails)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=UNDERLAY.encode(), check=True)
        return name, netns.open_netns(f"/var/run/netns/{name}")
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], check=False)
        raise
