"""A network namespace of our own for the tests against the kernel: our netlink handle in it,
and pyroute2's as the independent oracle that reads back what the requests did."""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from loxicni.net import netns
from loxicni.net.rtnl import Rtnl


@dataclass
class Ns:
    """A network namespace of our own: its name, fd, our handle and pyroute2's in it."""

    name: str
    fd: int
    rt: Rtnl
    pyr: IPRoute

    def link(self, index: int) -> Any:
        return self.pyr.link("get", index=index)[0]

    def index(self, name: str) -> int:
        found = self.pyr.link_lookup(ifname=name)
        assert found, name
        return int(found[0])

    def ip(self, *args: str) -> str:
        return subprocess.run(
            ["ip", "-n", self.name, *args], capture_output=True, text=True, check=True
        ).stdout

    def close(self) -> None:
        """Close both handles and the fd, then delete the namespace."""
        self.rt.close()
        self.pyr.close()
        os.close(self.fd)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def open_ns(prefix: str) -> Ns:
    """A new namespace named ``prefix-<random>``; ``close()`` removes it."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    fd = netns.open_netns(f"/var/run/netns/{name}")
    return Ns(name, fd, Rtnl(netns.netlink_socket_in(fd)), IPRoute(netns=name))
