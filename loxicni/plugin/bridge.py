"""The bridge plugin: ADD, DEL, CHECK, GC and STATUS as functions of a request.

Read top to bottom like the reference bridge plugin's cmdAdd/cmdDel/cmdCheck. Every ADD step
registers its undo, and a failure unwinds them in reverse, so a failed ADD leaves no veth, no
address reservation and no nftables rule behind.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from loxicni.cni.errors import CniError, Code
from loxicni.cni.request import Request
from loxicni.cni.result import result_from_json
from loxicni.cni.types import DNS, Interface, IPAddress, IPConfig, Result, Route
from loxicni.logs import add_log_file, get_logger
from loxicni.net import ipconf, links, masq, netns, sysctl
from loxicni.net.reaper import LinkReaper
from loxicni.net.rtnl import NetlinkError, Rtnl
from loxicni.plugin import naming, records
from loxicni.plugin.config import BridgeConfig, parse_config
from loxicni.plugin.ipam import Ipam
from loxicni.plugin.locks import attachment_lock

log = get_logger("loxi-cni")  # imports logging only if something is logged

DEFAULT_V4 = ipaddress.ip_network("0.0.0.0/0")
DEFAULT_V6 = ipaddress.ip_network("::/0")


def load_config(req: Request) -> BridgeConfig:
    prev: Result | None = None
    if req.config.get("prevResult") is not None:
        prev = result_from_json(req.config["prevResult"])
    cfg = parse_config(req.config, req.cni_version, dict(req.args), prev)
    if cfg.log_file:
        add_log_file(cfg.log_file)
    return cfg


@contextmanager
def kernel_errors(what: str) -> Iterator[None]:
    """Turn a netlink or OS failure into a CNI error that says what was being done."""
    try:
        yield
    except NetlinkError as exc:
        raise CniError(Code.KERNEL_ERROR, f"{what}: {os.strerror(exc.errno)}", str(exc)) from exc
    except OSError as exc:
        raise CniError(Code.IO_FAILURE, f"{what}: {exc.strerror or exc}") from exc


@dataclass
class Undo:
    """Undo steps of a running ADD, run in reverse on failure."""

    steps: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)

    def push(self, what: str, fn: Callable[[], Any]) -> None:
        self.steps.append((what, fn))

    def unwind(self) -> None:
        for what, fn in reversed(self.steps):
            try:
                fn()
            except Exception:  # keep unwinding; the original error is what the runtime sees
                log.exception("rollback step failed: %s", what)
        self.steps.clear()


class Sandbox:
    """The pod's netns: an fd and a netlink socket bound to it."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        try:
            self.fd = netns.adopt_netns(fd) if fd is not None else netns.open_netns(path)
        except netns.NetnsGone as exc:
            raise CniError(Code.UNKNOWN_CONTAINER, f"netns {path} does not exist") from exc
        except netns.NotANetns as exc:
            raise CniError(
                Code.INVALID_ENV, f"CNI_NETNS {path} is not a network namespace"
            ) from exc
        except OSError as exc:
            raise CniError(Code.IO_FAILURE, f"cannot open netns {path}: {exc.strerror}") from exc
        self.path = path
        try:
            self.ipr = Rtnl(netns.netlink_socket_in(self.fd))
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        self.ipr.close()
        os.close(self.fd)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gateway_of(ip: IPConfig) -> IPAddress:
    """The gateway of an address: IPAM's, else the subnet's first host (like the reference)."""
    if ip.gateway is not None:
        return ip.gateway
    return ip.address.network.network_address + 1


def _family_gateway(ips: list[IPConfig], version: int) -> IPAddress | None:
    """The gateway IPAM gave the first address of a family, if any."""
    return next((ip.gateway for ip in ips if ip.address.version == version), None)


def _container_routes(cfg: BridgeConfig, ipam: Result) -> list[Route]:
    """IPAM's routes plus the default routes of isDefaultGateway, as reported in the result."""
    routes = list(ipam.routes)
    if not cfg.is_default_gateway:
        return routes
    for default in (DEFAULT_V4, DEFAULT_V6):
        first = next((ip for ip in ipam.ips if ip.address.version == default.version), None)
        if first is None:
            continue
        gw = _gateway_of(first)
        existing = [r for r in routes if r.dst == default]
        if any(r.gw not in (None, gw) for r in existing):
            raise CniError(
                Code.INVALID_CONFIG,
                f"isDefaultGateway: IPAM already sets a default route via {existing[0].gw}",
            )
        if not existing:
            routes.append(Route(dst=default, gw=gw))
    return routes


def _route_gateway(route: Route, ips: list[IPConfig]) -> IPAddress | None:
    """The next hop a route is installed with: its own, else its family's gateway."""
    return route.gw if route.gw is not None else _family_gateway(ips, route.dst.version)


def _merge(prev: Result | None, ours: Result) -> Result:
    """Our result appended to prevResult's (a plugin earlier in the chain)."""
    if prev is None:
        return ours
    offset = len(prev.interfaces)
    for ip in ours.ips:
        if ip.interface is not None:
            ip.interface += offset
    return Result(
        cni_version=ours.cni_version,
        interfaces=prev.interfaces + ours.interfaces,
        ips=prev.ips + ours.ips,
        routes=prev.routes + ours.routes,
        dns=ours.dns if not ours.dns.is_empty() else prev.dns,
    )


class BridgePlugin:
    """The CNI handlers of the bridge plugin (see ``loxicni.cni.skel.Handlers``).

    ``netns_fd``: the pod's netns opened by the caller (the thin client passes it to the
    agent), used instead of opening CNI_NETNS. ``reaper``: the agent's batched link deleter.
    """

    def __init__(self, netns_fd: int | None = None, reaper: LinkReaper | None = None) -> None:
        self.netns_fd = netns_fd
        self.reaper = reaper

    def _sandbox(self, req: Request) -> Sandbox:
        return Sandbox(req.netns, self.netns_fd)

    # ----------------------------------------------------------------------------- ADD
    def add(self, req: Request) -> Result:
        cfg = load_config(req)
        ipam = Ipam(req, cfg.ipam_type)  # validates the IPAM config before anything is touched
        with attachment_lock(cfg.network, req.container_id, req.ifname) as lock:
            try:
                with Rtnl() as host, self._sandbox(req) as sandbox:
                    result = self._add_locked(req, cfg, ipam, host, sandbox)
            except BaseException:
                lock.remove_on_release = True
                raise
        return _merge(cfg.prev_result, result)

    def _add_locked(
        self, req: Request, cfg: BridgeConfig, ipam: Ipam, host: Rtnl, sandbox: Sandbox
    ) -> Result:
        with kernel_errors(f"looking up {req.ifname} in {req.netns}"):
            if links.get(sandbox.ipr, req.ifname) is not None:
                raise CniError(
                    Code.INTERFACE_EXISTS, f"interface {req.ifname} already exists in {req.netns}"
                )
        key = records.record_key(cfg.network, req.container_id, req.ifname)
        if records.load(key) is not None:
            # An earlier ADD of this attachment died half-way, or its pod interface is gone
            # without a DEL: finish tearing it down first, so nothing of it leaks.
            log.info("ADD: tearing down the remains of an earlier attachment first")
            self._teardown(req, cfg, ipam, host, pod_link=False)
        record = records.Record(
            network=cfg.network,
            container_id=req.container_id,
            ifname=req.ifname,
            netns=req.netns,
            config=req.config,
            cni_args=req.args_string(),
            cni_path=list(req.path),
        )
        undo = Undo()
        try:
            records.save(record)
            undo.push(
                "remove the attachment record",
                partial(records.remove, cfg.network, req.container_id, req.ifname),
            )
            result = self._add(req, cfg, ipam, host, sandbox, undo)
        except BaseException:
            undo.unwind()  # while the netlink sockets are still open
            raise
        record.state = records.READY
        record.host_veth = result.interfaces[1].name
        record.ips = [str(ip.address) for ip in result.ips]
        record.mac = result.interfaces[2].mac
        record.mtu = result.interfaces[2].mtu or 0
        record.gateways = [str(ip.gateway) for ip in result.ips if ip.gateway is not None]
        records.save(record)
        log.info(
            "ADD %s %s/%s: %s via %s on %s",
            cfg.network,
            req.container_id,
            req.ifname,
            " ".join(record.ips),
            record.host_veth,
            cfg.bridge,
        )
        return result

    def _add(
        self,
        req: Request,
        cfg: BridgeConfig,
        ipam: Ipam,
        host: Rtnl,
        sandbox: Sandbox,
        undo: Undo,
    ) -> Result:
        bridge = self._ensure_bridge(host, cfg)
        host_veth = self._create_veth(req, cfg, host, sandbox, bridge, undo)

        allocated = ipam.add()
        undo.push("release addresses", ipam.delete)
        if not allocated.ips:
            raise CniError(Code.IPAM_FAILURE, f"IPAM {cfg.ipam_type} returned no address")
        ips = [
            IPConfig(
                address=ip.address,
                interface=2,
                gateway=_gateway_of(ip) if cfg.is_gateway else ip.gateway,
            )
            for ip in allocated.ips
        ]
        routes = _container_routes(cfg, allocated)

        with kernel_errors(f"configuring {req.ifname} in {req.netns}"):
            pod = links.get(sandbox.ipr, req.ifname)
            if pod is None:
                raise CniError(Code.KERNEL_ERROR, f"{req.ifname} vanished from {req.netns}")
            links.set_up(sandbox.ipr, pod.index)
            for ip in ips:
                ipconf.add_address(sandbox.ipr, pod.index, ip.address, dad=cfg.enable_dad)
            for route in routes:
                gw = _route_gateway(route, ips)
                ipconf.add_route(sandbox.ipr, pod.index, replace(route, gw=gw))
        if cfg.is_gateway:
            self._gateway_on_bridge(host, cfg, bridge, ips)
        if cfg.ip_masq:
            masq.add_masquerade(
                cfg.network, req.container_id, req.ifname, [ip.address for ip in ips]
            )
            undo.push(
                "remove masquerade",
                lambda: masq.remove_masquerade(cfg.network, req.container_id, req.ifname),
            )

        return Result(
            cni_version=cfg.cni_version,
            interfaces=[
                Interface(name=bridge.name, mac=bridge.mac),
                Interface(name=host_veth.name, mac=host_veth.mac),
                Interface(name=pod.name, mac=pod.mac, mtu=pod.mtu, sandbox=req.netns),
            ],
            ips=ips,
            routes=routes,
            dns=allocated.dns if not allocated.dns.is_empty() else DNS(),
        )

    def _ensure_bridge(self, host: Rtnl, cfg: BridgeConfig) -> links.Link:
        vlan_filtering = bool(cfg.vlan or cfg.vlan_trunk)
        try:
            bridge, _ = links.ensure_bridge(
                host, cfg.bridge, mtu=cfg.mtu, promisc=cfg.promisc, vlan_filtering=vlan_filtering
            )
        except NetlinkError as exc:
            if vlan_filtering and exc.errno == errno.EOPNOTSUPP:
                raise CniError(
                    Code.KERNEL_UNSUPPORTED,
                    f"VLAN {cfg.vlan or 'trunk'} requested, but this kernel lacks bridge VLAN "
                    f"filtering (enabling vlan_filtering on {cfg.bridge}: operation not supported)",
                ) from exc
            raise CniError(
                Code.KERNEL_ERROR, f"setting up bridge {cfg.bridge}: {os.strerror(exc.errno)}"
            ) from exc
        return bridge

    def _create_veth(
        self,
        req: Request,
        cfg: BridgeConfig,
        host: Rtnl,
        sandbox: Sandbox,
        bridge: links.Link,
        undo: Undo,
    ) -> links.Link:
        alias = naming.alias(cfg.network, req.container_id, req.ifname)
        for name in naming.candidates(cfg.veth_prefix, cfg.network, req.container_id, req.ifname):
            try:
                veth = links.create_veth(
                    host,
                    host_name=name,
                    peer_name=req.ifname,
                    peer_netns_fd=sandbox.fd,
                    mtu=cfg.mtu,
                    peer_mac=cfg.mac,
                )
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:
                    raise CniError(
                        Code.KERNEL_ERROR, f"creating veth {name}: {os.strerror(exc.errno)}"
                    ) from exc
                if links.get(sandbox.ipr, req.ifname) is not None:  # lost a race for the ifname
                    raise CniError(
                        Code.INTERFACE_EXISTS,
                        f"interface {req.ifname} already exists in {req.netns}",
                    ) from exc
                continue  # the host name is taken: next candidate
            undo.push(f"delete veth {name}", partial(links.delete, host, veth.index))
            with kernel_errors(f"attaching {name} to bridge {bridge.name}"):
                links.attach_port(host, veth.index, bridge.index, alias=alias, hairpin=cfg.hairpin)
                ops = links.port_vlan_ops(cfg.vlan, cfg.vlan_trunk, cfg.preserve_default_vlan)
                links.apply_vlan_ops(host, veth.index, ops)
            return veth
        raise CniError(Code.KERNEL_ERROR, "no free host veth name", f"alias {alias}")

    def _gateway_on_bridge(
        self, host: Rtnl, cfg: BridgeConfig, bridge: links.Link, ips: list[IPConfig]
    ) -> None:
        with kernel_errors(f"adding the gateway address to {bridge.name}"):
            for ip in ips:
                gw = ipaddress.ip_interface(f"{_gateway_of(ip)}/{ip.address.network.prefixlen}")
                if not ipconf.add_address(host, bridge.index, gw, dad=False):
                    continue  # already there: the common case costs one request
                # The first gateway of this subnet: is another address of it on the bridge?
                clashing = [
                    a
                    for a in ipconf.addresses(host, bridge.index)
                    if a != gw and a.version == gw.version and a.network == gw.network
                ]
                if clashing and not cfg.force_address:
                    ipconf.delete_address(host, bridge.index, gw)
                    raise CniError(
                        Code.INVALID_CONFIG,
                        f"bridge {bridge.name} already has {clashing[0]}, not gateway {gw} "
                        "(set forceAddress to replace it)",
                    )
                for old in clashing:
                    ipconf.delete_address(host, bridge.index, old)
            sysctl.forwarding_on(
                ipv4=any(ip.address.version == 4 for ip in ips),
                ipv6=any(ip.address.version == 6 for ip in ips),
            )

    # ----------------------------------------------------------------------------- DEL
    def delete(self, req: Request) -> None:
        cfg = load_config(req)
        with attachment_lock(cfg.network, req.container_id, req.ifname) as lock:
            with Rtnl() as host:
                self._teardown(req, cfg, Ipam(req, cfg.ipam_type), host, pod_link=True)
            lock.remove_on_release = True
        log.info("DEL %s %s/%s", cfg.network, req.container_id, req.ifname)

    def _teardown(
        self, req: Request, cfg: BridgeConfig, ipam: Ipam, host: Rtnl, *, pod_link: bool
    ) -> None:
        """Remove everything of the attachment; each step tolerates its part being gone.

        Order: masquerade and links before the address, which a new pod may get the moment
        it is free; the record last, so a teardown cut short is finished on reconcile.
        """
        if cfg.ip_masq:
            masq.remove_masquerade(cfg.network, req.container_id, req.ifname)
        # Deleting the host end takes the pod end with it (from the host netns, where the
        # agent batches deletions); the netns is opened only if no host end is left.
        found = self._delete_host_veths(host, cfg, req.container_id, req.ifname)
        if pod_link and req.netns and not found:
            self._delete_pod_link(req)
        ipam.delete()
        records.remove(cfg.network, req.container_id, req.ifname)

    def _delete_pod_link(self, req: Request) -> None:
        try:
            sandbox = self._sandbox(req)
        except CniError as exc:
            if exc.code == Code.UNKNOWN_CONTAINER:
                return  # the netns is gone, and the veth pair with it
            raise
        with sandbox, kernel_errors(f"deleting {req.ifname} in {req.netns}"):
            pod = links.get(sandbox.ipr, req.ifname)
            if pod is not None:
                links.delete(sandbox.ipr, pod.index)

    def _delete_host_veths(
        self, host: Rtnl, cfg: BridgeConfig, container_id: str, ifname: str
    ) -> bool:
        """Delete the host veths of this attachment; False if there was none."""
        alias = naming.alias(cfg.network, container_id, ifname)
        found = False
        with kernel_errors("deleting the host veth"):
            for name in naming.candidates(cfg.veth_prefix, cfg.network, container_id, ifname):
                link = links.get(host, name)
                if link is None or link.alias != alias:
                    continue
                found = True
                if self.reaper is not None:
                    self.reaper.delete(host, link.index)
                else:
                    links.delete(host, link.index)
        return found

    # --------------------------------------------------------------------------- CHECK
    def check(self, req: Request) -> None:
        cfg = load_config(req)
        prev = cfg.prev_result
        if prev is None:
            raise CniError(Code.INVALID_CONFIG, "CHECK needs a prevResult")
        with attachment_lock(cfg.network, req.container_id, req.ifname):
            held = Ipam(req, cfg.ipam_type).check()
            with Rtnl() as host, self._sandbox(req) as sandbox, kernel_errors("CHECK"):
                self._check(req, cfg, prev, held, host, sandbox)

    def _check(
        self,
        req: Request,
        cfg: BridgeConfig,
        prev: Result,
        held: list[IPAddress] | None,
        host: Rtnl,
        sandbox: Sandbox,
    ) -> None:
        def fail(what: str) -> CniError:
            return CniError(Code.CHECK_FAILED, f"CHECK: {what}")

        pod_index = next(
            (i for i, itf in enumerate(prev.interfaces) if itf.name == req.ifname and itf.sandbox),
            None,
        )
        if pod_index is None:
            raise fail(f"prevResult has no interface {req.ifname} in a sandbox")
        expected_pod = prev.interfaces[pod_index]
        pod = links.get(sandbox.ipr, req.ifname)
        if pod is None:
            raise fail(f"interface {req.ifname} is missing from {req.netns}")
        if expected_pod.mac and pod.mac != expected_pod.mac.lower():
            raise fail(f"{req.ifname} has MAC {pod.mac}, prevResult says {expected_pod.mac}")
        if expected_pod.mtu and pod.mtu != expected_pod.mtu:
            raise fail(f"{req.ifname} has MTU {pod.mtu}, prevResult says {expected_pod.mtu}")
        if cfg.mtu and pod.mtu != cfg.mtu:
            raise fail(f"{req.ifname} has MTU {pod.mtu}, the config says {cfg.mtu}")

        ours = [ip for ip in prev.ips if ip.interface == pod_index]
        present = ipconf.addresses(sandbox.ipr, pod.index)
        for ip in ours:
            if ip.address not in present:
                raise fail(f"{req.ifname} lacks address {ip.address}")
            if held is not None and ip.address.ip not in held:
                raise fail(f"address {ip.address.ip} is not reserved for this attachment in IPAM")

        installed = ipconf.routes(sandbox.ipr, pod.index)
        for route in prev.routes:
            gw = _route_gateway(route, ours)
            if (route.dst, gw) not in installed:
                raise fail(f"route {route.dst} via {gw} is missing in {req.netns}")

        bridge = links.get(host, cfg.bridge)
        if bridge is None:
            raise fail(f"bridge {cfg.bridge} is missing")
        expected_bridge = next((i for i in prev.interfaces if i.name == cfg.bridge), None)
        if expected_bridge and expected_bridge.mac and bridge.mac != expected_bridge.mac.lower():
            raise fail(
                f"bridge {cfg.bridge} has MAC {bridge.mac}, prevResult says {expected_bridge.mac}"
            )

        host_veth = self._find_host_veth(host, cfg, req)
        if host_veth is None:
            raise fail(f"the host veth of {req.ifname} is missing")
        if host_veth.master != bridge.index:
            raise fail(f"host veth {host_veth.name} is not a port of bridge {cfg.bridge}")
        if host_veth.peer != pod.index:
            raise fail(f"host veth {host_veth.name} is not the peer of {req.ifname}")
        expected_host = next((i for i in prev.interfaces if i.name == host_veth.name), None)
        if expected_host is None:
            raise fail(f"prevResult does not list host veth {host_veth.name}")
        if expected_host.mac and host_veth.mac != expected_host.mac.lower():
            raise fail(
                f"host veth {host_veth.name} has MAC {host_veth.mac}, "
                f"prevResult says {expected_host.mac}"
            )
        if cfg.is_gateway:
            on_bridge = ipconf.addresses(host, bridge.index)
            for ip in ours:
                gw = ipaddress.ip_interface(f"{_gateway_of(ip)}/{ip.address.network.prefixlen}")
                if gw not in on_bridge:
                    raise fail(f"bridge {cfg.bridge} lacks gateway address {gw}")

    def _find_host_veth(self, host: Rtnl, cfg: BridgeConfig, req: Request) -> links.Link | None:
        alias = naming.alias(cfg.network, req.container_id, req.ifname)
        for name in naming.candidates(cfg.veth_prefix, cfg.network, req.container_id, req.ifname):
            link = links.get(host, name)
            if link is None:
                return None
            if link.alias == alias:
                return link
        return None

    # ------------------------------------------------------------------------------ GC
    def gc(self, req: Request) -> None:
        """Release every attachment of the network that is not in the valid list.

        Each stale attachment is torn down under its own lock (masquerade, host veth, record,
        lock file); then the store releases every reservation not valid, including ones the
        reference plugin made.
        """
        cfg = load_config(req)
        valid = _valid_attachments(req.config)
        stale = masq.masqueraded_attachments(cfg.network)
        stale |= {
            (r.container_id, r.ifname) for r in records.all_records() if r.network == cfg.network
        }
        with Rtnl() as host, kernel_errors("GC of host veths"):
            veths: dict[tuple[str, str], list[int]] = {}
            for link in links.dump(host):
                owner = naming.parse_alias(link.alias)
                if owner and owner[0] == cfg.network:
                    veths.setdefault((owner[1], owner[2]), []).append(link.index)
            stale |= set(veths)
            for container_id, ifname in sorted(stale - valid):
                with attachment_lock(cfg.network, container_id, ifname) as lock:
                    masq.remove_masquerade(cfg.network, container_id, ifname)
                    for index in veths.get((container_id, ifname), []):
                        links.delete(host, index)
                    records.remove(cfg.network, container_id, ifname)
                    lock.remove_on_release = True
        Ipam(req, cfg.ipam_type).gc(valid)

    # -------------------------------------------------------------------------- STATUS
    def status(self, req: Request) -> None:
        cfg = load_config(req)
        Ipam(req, cfg.ipam_type).status()


def _valid_attachments(conf: dict[str, Any]) -> set[tuple[str, str]]:
    """``cni.dev/valid-attachments`` (or the older ``cni.dev/attachments``) of a GC call."""
    raw = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise CniError(Code.INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    out: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("containerID"), str)
            and isinstance(item.get("ifname"), str)
        ):
            raise CniError(
                Code.INVALID_CONFIG,
                f"cni.dev/valid-attachments[{i}] needs containerID and ifname strings",
            )
        out.add((item["containerID"], item["ifname"]))
    return out
