"""CHECK: the attachment as the kernel holds it, compared with the ``prevResult`` the runtime
kept; the first difference is named in a CHECK_FAILED error."""

from __future__ import annotations

from loxicni.cni.errors import CniError, Code
from loxicni.cni.request import Request
from loxicni.cni.types import IPAddress
from loxicni.net import ipconf, links
from loxicni.net.netns import Netns
from loxicni.net.rtnl import Rtnl
from loxicni.plugin import hostveth
from loxicni.plugin.config import BridgeConfig
from loxicni.plugin.routes import bridge_gateway, route_gateway


def _fail(what: str) -> CniError:
    return CniError(Code.CHECK_FAILED, f"CHECK: {what}")


def check(
    req: Request, cfg: BridgeConfig, held: list[IPAddress] | None, host: Rtnl, sandbox: Netns
) -> None:
    """``held``: the addresses IPAM holds for the attachment (None when IPAM is delegated)."""
    prev = cfg.prev_result
    if prev is None:
        raise CniError(Code.INVALID_CONFIG, "CHECK needs a prevResult")
    pod_index = next(
        (i for i, itf in enumerate(prev.interfaces) if itf.name == req.ifname and itf.sandbox),
        None,
    )
    if pod_index is None:
        raise _fail(f"prevResult has no interface {req.ifname} in a sandbox")
    expected_pod = prev.interfaces[pod_index]
    pod = links.get(sandbox.ipr, req.ifname)
    if pod is None:
        raise _fail(f"interface {req.ifname} is missing from {req.netns}")
    if expected_pod.mac and pod.mac != expected_pod.mac.lower():
        raise _fail(f"{req.ifname} has MAC {pod.mac}, prevResult says {expected_pod.mac}")
    if expected_pod.mtu and pod.mtu != expected_pod.mtu:
        raise _fail(f"{req.ifname} has MTU {pod.mtu}, prevResult says {expected_pod.mtu}")
    if cfg.mtu and pod.mtu != cfg.mtu:
        raise _fail(f"{req.ifname} has MTU {pod.mtu}, the config says {cfg.mtu}")

    ours = [ip for ip in prev.ips if ip.interface == pod_index]
    present = ipconf.addresses(sandbox.ipr, pod.index)
    for ip in ours:
        if ip.address not in present:
            raise _fail(f"{req.ifname} lacks address {ip.address}")
        if held is not None and ip.address.ip not in held:
            raise _fail(f"address {ip.address.ip} is not reserved for this attachment in IPAM")

    installed = ipconf.routes(sandbox.ipr, pod.index)
    for route in prev.routes:
        gw = route_gateway(route, ours)
        if (route.dst, gw) not in installed:
            raise _fail(f"route {route.dst} via {gw} is missing in {req.netns}")

    bridge = links.get(host, cfg.bridge)
    if bridge is None:
        raise _fail(f"bridge {cfg.bridge} is missing")
    expected_bridge = next((i for i in prev.interfaces if i.name == cfg.bridge), None)
    if expected_bridge and expected_bridge.mac and bridge.mac != expected_bridge.mac.lower():
        raise _fail(
            f"bridge {cfg.bridge} has MAC {bridge.mac}, prevResult says {expected_bridge.mac}"
        )

    veths = hostveth.find(host, cfg.veth_prefix, cfg.network, req.container_id, req.ifname)
    if not veths:
        raise _fail(f"the host veth of {req.ifname} is missing")
    host_veth = next((v for v in veths if v.peer == pod.index), veths[0])
    if host_veth.master != bridge.index:
        raise _fail(f"host veth {host_veth.name} is not a port of bridge {cfg.bridge}")
    if host_veth.peer != pod.index:
        raise _fail(f"host veth {host_veth.name} is not the peer of {req.ifname}")
    expected_host = next((i for i in prev.interfaces if i.name == host_veth.name), None)
    if expected_host is None:
        raise _fail(f"prevResult does not list host veth {host_veth.name}")
    if expected_host.mac and host_veth.mac != expected_host.mac.lower():
        raise _fail(
            f"host veth {host_veth.name} has MAC {host_veth.mac}, "
            f"prevResult says {expected_host.mac}"
        )
    if cfg.is_gateway:
        on_bridge = ipconf.addresses(host, bridge.index)
        for ip in ours:
            gw = bridge_gateway(ip)
            if gw not in on_bridge:
                raise _fail(f"bridge {cfg.bridge} lacks gateway address {gw}")
