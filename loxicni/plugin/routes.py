"""Gateways and routes of a pod interface, as ADD installs them and CHECK expects them."""

from __future__ import annotations

import ipaddress

from loxicni.cni.errors import CniError, Code
from loxicni.cni.types import IPAddress, IPConfig, IPInterface, Result, Route
from loxicni.plugin.config import BridgeConfig

DEFAULT_V4 = ipaddress.ip_network("0.0.0.0/0")
DEFAULT_V6 = ipaddress.ip_network("::/0")


def gateway_of(ip: IPConfig) -> IPAddress:
    """The gateway of an address: IPAM's, else the subnet's first host (like the reference)."""
    if ip.gateway is not None:
        return ip.gateway
    return ip.address.network.network_address + 1


def bridge_gateway(ip: IPConfig) -> IPInterface:
    """The address isGateway puts on the bridge for ``ip``: its gateway, in its subnet."""
    return ipaddress.ip_interface(f"{gateway_of(ip)}/{ip.address.network.prefixlen}")


def route_gateway(route: Route, ips: list[IPConfig]) -> IPAddress | None:
    """The next hop a route is installed with: its own, else its family's gateway."""
    if route.gw is not None:
        return route.gw
    return next((ip.gateway for ip in ips if ip.address.version == route.dst.version), None)


def container_routes(cfg: BridgeConfig, ipam: Result) -> list[Route]:
    """IPAM's routes plus the default routes of isDefaultGateway, as reported in the result."""
    routes = list(ipam.routes)
    if not cfg.is_default_gateway:
        return routes
    for default in (DEFAULT_V4, DEFAULT_V6):
        first = next((ip for ip in ipam.ips if ip.address.version == default.version), None)
        if first is None:
            continue
        gw = gateway_of(first)
        existing = [r for r in routes if r.dst == default]
        if any(r.gw not in (None, gw) for r in existing):
            raise CniError(
                Code.INVALID_CONFIG,
                f"isDefaultGateway: IPAM already sets a default route via {existing[0].gw}",
            )
        if not existing:
            routes.append(Route(dst=default, gw=gw))
    return routes
