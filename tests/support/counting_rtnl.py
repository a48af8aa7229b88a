"""An Rtnl that counts what it sends: the overlay tests' and the overlay bench's own count of
netlink traffic, independent of what the code under test reports about itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loxicni.net import rtnl
from loxicni.net.rtnl import NetlinkError, Request, Rtnl

MODIFYING = frozenset(
    {
        rtnl.RTM_NEWLINK,
        rtnl.RTM_DELLINK,
        rtnl.RTM_SETLINK,
        rtnl.RTM_NEWADDR,
        rtnl.RTM_DELADDR,
        rtnl.RTM_NEWROUTE,
        rtnl.RTM_DELROUTE,
        rtnl.RTM_NEWNEIGH,
        rtnl.RTM_DELNEIGH,
    }
)


class CountingRtnl(Rtnl):
    """Counts the requests sent through it that change the kernel, the reads (dumps, gets),
    and the system calls that sent them."""

    def __init__(self, sock: Any) -> None:
        super().__init__(sock)
        self.modifying = 0
        self.reads = 0
        self.sends = 0

    def _count(self, request: Request) -> None:
        if request[0] in MODIFYING and request[1] & rtnl.NLM_F_DUMP != rtnl.NLM_F_DUMP:
            self.modifying += 1
        else:
            self.reads += 1

    def call(self, request: Request) -> list[bytes]:
        self._count(request)
        self.sends += 1
        return super().call(request)

    def batch(
        self, requests: Sequence[Request], *, window: int = rtnl.BATCH_WINDOW
    ) -> list[NetlinkError | None]:
        for request in requests:
            self._count(request)
        self.sends += -(-len(requests) // window)
        return super().batch(requests, window=window)

    def reset(self) -> None:
        self.modifying = self.reads = self.sends = 0

    def counts(self) -> tuple[int, int, int]:
        """(modifying, reads, sends) since the last reset; then reset."""
        out = (self.modifying, self.reads, self.sends)
        self.reset()
        return out
