"""The bridge plugin's handlers, imported on first use.

VERSION (which podman sends before every ADD and DEL) never needs netlink, so plugin mode
answers it without importing the plugin's netlink, IPAM and nftables code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loxicni.cni.request import Request
    from loxicni.cni.types import Result
    from loxicni.plugin.bridge import BridgePlugin


class LazyBridgePlugin:
    """Forwards each CNI command to a ``BridgePlugin`` created when first needed."""

    def __init__(self) -> None:
        self._plugin: BridgePlugin | None = None

    def _get(self) -> BridgePlugin:
        if self._plugin is None:
            from loxicni.plugin.bridge import BridgePlugin

            self._plugin = BridgePlugin()
        return self._plugin

    def add(self, req: Request) -> Result:
        return self._get().add(req)

    def delete(self, req: Request) -> None:
        self._get().delete(req)

    def check(self, req: Request) -> None:
        self._get().check(req)

    def gc(self, req: Request) -> None:
        self._get().gc(req)

    def status(self, req: Request) -> None:
        self._get().status(req)
