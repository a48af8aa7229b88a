"""Opening a pod's netns: what is refused, and the thread trick that binds a socket to it."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from loxicni.net import links, netns
from loxicni.net.rtnl import Rtnl


@pytest.fixture
def named_netns() -> Iterator[str]:
    name = f"nst-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_open_and_adopt_a_netns(named_netns: str) -> None:
    fd = netns.open_netns(named_netns)
    try:
        own = netns.adopt_netns(fd)
        assert own != fd
        with Rtnl(netns.netlink_socket_in(own)) as inside:
            assert [link.name for link in links.dump(inside)] == ["lo"]
        os.close(own)
    finally:
        os.close(fd)


@pytest.mark.parametrize("path", ["/etc/hostname", "/proc/self/ns/uts", "/proc/self"])
def test_not_a_netns_is_refused(path: str) -> None:
    with pytest.raises((netns.NotANetns, IsADirectoryError)):
        netns.open_netns(path)
    if os.path.isfile(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(netns.NotANetns):
                netns.adopt_netns(fd)
        finally:
            os.close(fd)


def test_missing_netns_is_gone() -> None:
    with pytest.raises(netns.NetnsGone):
        netns.open_netns(f"/var/run/netns/nst-missing-{uuid.uuid4().hex}")
    with pytest.raises(netns.NetnsGone):
        netns.open_netns("/etc/hostname/x")
