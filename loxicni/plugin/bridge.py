"""The bridge plugin: ADD and DEL read top to bottom; CHECK and GC in their own modules.

Every ADD step registers its undo, and a failure unwinds them in reverse, so a failed ADD leaves
no veth, no address reservation and no nftables element behind. Every call holds its
attachment's lock from the first look at the kernel to the last change.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from loxicni.base import faults
from loxicni.base.logs import get_logger, use_log_file
from loxicni.cni.errors import CniError, Code
from loxicni.cni.request import Request
from loxicni.cni.result import result_from_json, result_to_json
from loxicni.cni.types import DNS, Interface, IPConfig, Result
from loxicni.net import ipconf, links, masq, sysctl
from loxicni.net.netns import Netns
from loxicni.net.rtnl import NetlinkError, Rtnl
from loxicni.plugin import hostveth, naming, records
from loxicni.plugin.config import BridgeConfig, parse_config
from loxicni.plugin.errors import cni_errors
from loxicni.plugin.ipam import Ipam
from loxicni.plugin.locks import HeldLock, attachment_lock
from loxicni.plugin.routes import bridge_gateway, container_routes, gateway_of, route_gateway
from loxicni.plugin.undo import Undo

if TYPE_CHECKING:  # queue and heapq, which the reaper imports, only for the agent
    from loxicni.net.reaper import LinkReaper

log = get_logger(__name__)


def load_config(req: Request) -> BridgeConfig:
    prev: Result | None = None
    if req.config.get("prevResult") is not None:
        prev = result_from_json(req.config["prevResult"])
    cfg = parse_config(req.config, req.cni_version, dict(req.args), prev)
    if cfg.log_file:
        use_log_file(cfg.log_file)
    return cfg


def merge(prev: Result | None, ours: Result) -> Result:
    """Our result appended to prevResult's (a plugin earlier in the chain)."""
    if prev is None:
        return ours
    offset = len(prev.interfaces)
    ips = [
        replace(ip, interface=None if ip.interface is None else ip.interface + offset)
        for ip in ours.ips
    ]
    return Result(
        cni_version=ours.cni_version,
        interfaces=prev.interfaces + ours.interfaces,
        ips=prev.ips + ips,
        routes=prev.routes + ours.routes,
        dns=ours.dns if not ours.dns.is_empty() else prev.dns,
    )


@dataclass
class Attached:
    """What an ADD made, by name: the bridge, the host end and the pod end of the veth."""

    bridge: links.Link
    host_veth: links.Link
    pod: links.Link
    sandbox: str  # the netns path the runtime named

    def interfaces(self) -> list[Interface]:
        """The result's interfaces; ``POD`` is the pod interface's index among them."""
        return [
            Interface(name=self.bridge.name, mac=self.bridge.mac),
            Interface(name=self.host_veth.name, mac=self.host_veth.mac),
            Interface(name=self.pod.name, mac=self.pod.mac, mtu=self.pod.mtu, sandbox=self.sandbox),
        ]

    POD = 2


def attachment_fence(key: str) -> Hashable:
    return ("attachment", key)


def netns_fence(netns_fd: int, ifname: str) -> Hashable:
    """The fence of an interface name in one netns, whoever's attachment it was."""
    st = os.fstat(netns_fd)
    return ("netns", st.st_dev, st.st_ino, ifname)


def _host_veths(host: Rtnl, req: Request, cfg: BridgeConfig, hint: str) -> list[links.Link]:
    """The host veths of ``req``'s attachment; ``hint``: the name its record gives."""
    return hostveth.find(
        host, cfg.veth_prefix, cfg.network, req.container_id, req.ifname, hint=hint
    )


def _new_record(req: Request, cfg: BridgeConfig) -> records.Record:
    """A fresh record of the attachment ``req`` names (state "adding")."""
    return records.Record(
        network=cfg.network,
        container_id=req.container_id,
        ifname=req.ifname,
        netns=req.netns,
        config=req.config,
        cni_args=req.args_string(),
        cni_path=list(req.path),
        bridge=cfg.bridge,
        vlan=cfg.vlan,
        generation=records.new_generation(),
    )


def _forget_deleted(network: str, container_id: str, ifname: str, generation: str) -> None:
    """After a background deletion: drop the "deleting" record, unless an ADD has replaced
    it since (under the lock, so never in the middle of one)."""
    with attachment_lock(network, container_id, ifname) as lock:
        try:
            record = records.load(naming.attachment_key(network, container_id, ifname))
        except records.Unreadable:
            return
        if record is None or record.generation == generation:
            records.remove(network, container_id, ifname)
            lock.remove_on_release = True


class BridgePlugin:
    """The CNI handlers of the bridge plugin (see ``loxicni.cni.skel.Handlers``).

    ``netns_fd``: the pod's netns opened by the caller (the thin client passes it to the
    agent), used instead of opening CNI_NETNS. ``require_fd``: the agent never opens a netns
    path itself, since its mount and PID namespaces are not the runtime's. ``reaper``: the
    agent's batched link deleter. ``abandoned``: whether the caller has given up waiting
    (the agent's client timed out or died).
    """

    def __init__(
        self,
        netns_fd: int | None = None,
        reaper: LinkReaper | None = None,
        *,
        require_fd: bool = False,
        abandoned: Callable[[], bool] | None = None,
    ) -> None:
        self.netns_fd = netns_fd
        self.reaper = reaper
        self.require_fd = require_fd
        self.abandoned = abandoned

    def still_wanted(self, lock: HeldLock | None = None, key: str = "") -> None:
        """TRY_AGAIN_LATER, before anything is done, if the caller has given up.

        A runtime that got no answer (its client timed out on a stalled agent) goes on
        without this call: it DELs, retries, adds the pod again, perhaps in-process. Run
        now, an ADD would leak an attachment nobody will DEL, a DEL would tear down the pod
        added since, a GC would collect it. Checked with the attachment's lock held: a call
        whose caller still waits then finishes before any call that caller makes next.
        """
        if self.abandoned is not None and self.abandoned():
            if lock is not None and not records.exists(key):
                lock.remove_on_release = True  # nothing done: no lock file of ours is left
            raise CniError(Code.TRY_AGAIN_LATER, "the caller gave up waiting; nothing was done")

    def open_netns(self, req: Request) -> Netns:
        with cni_errors(f"opening netns {req.netns}"):
            if self.netns_fd is None and self.require_fd:
                # The client could not open the path: from the runtime's side it is gone.
                raise CniError(Code.UNKNOWN_CONTAINER, f"netns {req.netns} does not exist")
            return Netns(req.netns, self.netns_fd)

    # ----------------------------------------------------------------------------- ADD
    def add(self, req: Request) -> Result:
        cfg = load_config(req)
        ipam = Ipam(req, cfg.ipam_type)  # validates the IPAM config before anything is touched
        with attachment_lock(cfg.network, req.container_id, req.ifname) as lock:
            try:
                self.still_wanted()
                with cni_errors("ADD"), Rtnl() as host, self.open_netns(req) as sandbox:
                    result = self._add_locked(req, cfg, ipam, host, sandbox)
            except BaseException:
                lock.remove_on_release = True
                raise
        return merge(cfg.prev_result, result)

    def _add_locked(
        self, req: Request, cfg: BridgeConfig, ipam: Ipam, host: Rtnl, sandbox: Netns
    ) -> Result:
        key = naming.attachment_key(cfg.network, req.container_id, req.ifname)
        if self.reaper is not None:
            # A DEL of this attachment, or of this ifname in this netns, may still be deleting
            # its veth in the background: wait for it rather than collide with it.
            for fence in (attachment_fence(key), netns_fence(sandbox.fd, req.ifname)):
                if not self.reaper.wait(fence):
                    raise CniError(Code.TRY_AGAIN_LATER, "an earlier DEL is still being finished")
        try:
            earlier = records.load(key)
        except records.Unreadable as exc:
            raise CniError(
                Code.IO_FAILURE,
                f"the record of this attachment cannot be read ({exc.why}); it is left for an "
                "administrator (or the version that wrote it)",
            ) from exc
        if earlier is not None:
            repeated = self._repeated_add(req, cfg, host, sandbox, earlier)
            if repeated is not None:
                return repeated
        with cni_errors(f"looking up {req.ifname} in {req.netns}"):
            if links.get(sandbox.ipr, req.ifname) is not None:
                raise CniError(
                    Code.INTERFACE_EXISTS, f"interface {req.ifname} already exists in {req.netns}"
                )
        if earlier is not None:
            # An earlier ADD of this attachment died half-way, or its pod interface is gone
            # without a DEL: finish tearing it down first, so nothing of it leaks.
            log.info("ADD: tearing down the remains of an earlier attachment first")
            self.teardown_locked(req, cfg, host, pod_link=False)
        record = _new_record(req, cfg)
        undo = Undo()
        try:
            records.save(record)
            undo.push(
                "remove the attachment record",
                partial(records.remove, cfg.network, req.container_id, req.ifname),
            )
            faults.step("add-record")
            result, attached = self._add(req, cfg, ipam, host, sandbox, undo)
        except BaseException:
            undo.unwind()  # while the netlink sockets are still open
            raise
        record.state = records.READY
        record.host_veth = attached.host_veth.name
        record.ips = [str(ip.address) for ip in result.ips]
        record.mac = attached.pod.mac
        record.mtu = attached.pod.mtu
        record.gateways = [str(ip.gateway) for ip in result.ips if ip.gateway is not None]
        record.result = result_to_json(result, "1.1.0")
        records.save(record)
        faults.step("add-ready")
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

    def _repeated_add(
        self, req: Request, cfg: BridgeConfig, host: Rtnl, sandbox: Netns, earlier: records.Record
    ) -> Result | None:
        """The recorded result when this ADD repeats one that succeeded (a runtime retrying
        after a timeout), with everything still in place; else None."""
        if not (
            earlier.state == records.READY
            and earlier.result
            and earlier.netns == req.netns
            and earlier.config == req.config
        ):
            return None
        with cni_errors(f"looking up {req.ifname} in {req.netns}"):
            pod = links.get(sandbox.ipr, req.ifname)
            veths = _host_veths(host, req, cfg, earlier.host_veth)
        if pod is None or not any(v.peer == pod.index for v in veths):
            return None
        result = result_from_json(earlier.result)
        result.cni_version = cfg.cni_version
        log.info("ADD repeated for a ready attachment: answering with its recorded result")
        return result

    def _add(
        self,
        req: Request,
        cfg: BridgeConfig,
        ipam: Ipam,
        host: Rtnl,
        sandbox: Netns,
        undo: Undo,
    ) -> tuple[Result, Attached]:
        bridge = self._ensure_bridge(host, cfg)
        faults.step("add-bridge")
        host_veth = self._create_veth(req, cfg, host, sandbox, bridge, undo)
        faults.step("add-port")

        allocated = ipam.add()
        undo.push("release addresses", ipam.delete)
        faults.step("add-ipam")
        if not allocated.ips:
            raise CniError(Code.IPAM_FAILURE, f"IPAM {cfg.ipam_type} returned no address")
        ips = [
            IPConfig(
                address=ip.address,
                interface=Attached.POD,
                gateway=gateway_of(ip) if cfg.is_gateway else ip.gateway,
            )
            for ip in allocated.ips
        ]
        routes = container_routes(cfg, allocated)

        with cni_errors(f"configuring {req.ifname} in {req.netns}"):
            pod = links.get(sandbox.ipr, req.ifname)
            if pod is None:
                raise CniError(Code.KERNEL_ERROR, f"{req.ifname} vanished from {req.netns}")
            links.set_up(sandbox.ipr, pod.index)
            for ip in ips:
                ipconf.add_address(sandbox.ipr, pod.index, ip.address, dad=cfg.enable_dad)
            for route in routes:
                gw = route_gateway(route, ips)
                ipconf.add_route(sandbox.ipr, pod.index, replace(route, gw=gw))
        faults.step("add-addresses")
        if cfg.is_gateway:
            self._gateway_on_bridge(host, cfg, bridge, ips)
        if cfg.ip_masq:
            with cni_errors("setting up masquerading"):
                masq.add_masquerade(
                    cfg.network, req.container_id, req.ifname, [ip.address for ip in ips]
                )
            undo.push(
                "remove masquerade",
                partial(masq.remove_masquerade, cfg.network, req.container_id, req.ifname),
            )
            faults.step("add-masq")

        attached = Attached(bridge=bridge, host_veth=host_veth, pod=pod, sandbox=req.netns)
        result = Result(
            cni_version=cfg.cni_version,
            interfaces=attached.interfaces(),
            ips=ips,
            routes=routes,
            dns=allocated.dns if not allocated.dns.is_empty() else DNS(),
        )
        return result, attached

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
            raise
        return bridge

    def _create_veth(
        self,
        req: Request,
        cfg: BridgeConfig,
        host: Rtnl,
        sandbox: Netns,
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
                    raise
                if links.get(sandbox.ipr, req.ifname) is not None:  # lost a race for the ifname
                    raise CniError(
                        Code.INTERFACE_EXISTS,
                        f"interface {req.ifname} already exists in {req.netns}",
                    ) from exc
                continue  # the host name is taken: next candidate
            undo.push(f"delete veth {name}", partial(links.delete, host, veth.index))
            faults.step("add-veth")
            with cni_errors(f"attaching {name} to bridge {bridge.name}"):
                links.attach_port(host, veth.index, bridge.index, alias=alias, hairpin=cfg.hairpin)
                ops = links.port_vlan_ops(cfg.vlan, cfg.vlan_trunk, cfg.preserve_default_vlan)
                links.apply_vlan_ops(host, veth.index, ops)
            return veth
        raise CniError(Code.KERNEL_ERROR, "no free host veth name", f"alias {alias}")

    def _gateway_on_bridge(
        self, host: Rtnl, cfg: BridgeConfig, bridge: links.Link, ips: list[IPConfig]
    ) -> None:
        with cni_errors(f"adding the gateway address to {bridge.name}"):
            for ip in ips:
                gw = bridge_gateway(ip)
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
            self.still_wanted(
                lock, naming.attachment_key(cfg.network, req.container_id, req.ifname)
            )
            with cni_errors("DEL"), Rtnl() as host:
                deferred = self.teardown_locked(
                    req, cfg, host, pod_link=True, background=not cfg.sync_teardown
                )
            # A deletion still under way keeps its lock file until its record goes.
            lock.remove_on_release = not deferred
        log.info("DEL %s %s/%s", cfg.network, req.container_id, req.ifname)

    def teardown_locked(
        self,
        req: Request,
        cfg: BridgeConfig,
        host: Rtnl,
        *,
        pod_link: bool,
        background: bool = False,
    ) -> bool:
        """Remove everything of the attachment, its lock held; each step tolerates its part
        being gone. True if the host veth is left to be deleted in the background.

        Order: masquerade and links before the address, which a new pod may get the moment
        it is free; the record last, so a teardown cut short is finished on reconcile. In the
        background (the agent, unless the config says ``syncTeardown``), the veth leaves its
        bridge and goes down at once, and the kernel's slow deletion runs after the answer;
        the record says "deleting" until then, and fences stop an ADD that needs it gone.
        """
        key = naming.attachment_key(cfg.network, req.container_id, req.ifname)
        try:
            record = records.load(key)
        except records.Unreadable:
            record = None
        if cfg.ip_masq:
            with cni_errors("removing masquerading"):
                masq.remove_masquerade(cfg.network, req.container_id, req.ifname)
            faults.step("del-masq")
        with cni_errors("finding the host veth"):
            veths = _host_veths(host, req, cfg, record.host_veth if record is not None else "")
        if background and veths and self.reaper is not None:
            self._retire_veths(req, cfg, host, record, veths)
            faults.step("del-veth")
            Ipam(req, cfg.ipam_type).delete()
            faults.step("del-ipam")
            return True
        with cni_errors("deleting the host veth"):
            for link in veths:
                if self.reaper is not None:
                    self.reaper.delete(host, link.index)
                else:
                    links.delete(host, link.index)
        # Deleting the host end took the pod end with it; the netns is opened only if no host
        # end was left.
        if pod_link and req.netns and not veths:
            self._delete_pod_link(req)
        faults.step("del-veth")
        Ipam(req, cfg.ipam_type).delete()
        faults.step("del-ipam")
        records.remove(cfg.network, req.container_id, req.ifname)
        faults.step("del-record")
        return False

    def _retire_veths(
        self,
        req: Request,
        cfg: BridgeConfig,
        host: Rtnl,
        record: records.Record | None,
        veths: list[links.Link],
    ) -> None:
        """Mark the attachment "deleting" (so a crash from here on is finished by
        reconcile), take its host veths out of service and hand them to the reaper."""
        assert self.reaper is not None
        if record is None:
            record = _new_record(req, cfg)
        record.state = records.DELETING
        record.generation = records.new_generation()
        record.host_veth = veths[0].name
        records.save(record)
        fences: list[Hashable] = [attachment_fence(record.key)]
        if self.netns_fd is not None:
            fences.append(netns_fence(self.netns_fd, req.ifname))
        done = partial(
            _forget_deleted, cfg.network, req.container_id, req.ifname, record.generation
        )
        with cni_errors("retiring the host veth"):
            for i, link in enumerate(veths):
                self.reaper.delete_later(host, link.index, fences, done if i == 0 else None)

    def _delete_pod_link(self, req: Request) -> None:
        if self.netns_fd is None and self.require_fd:
            return  # the client could not open the netns: it is gone, and the pair with it
        try:
            sandbox = self.open_netns(req)
        except CniError as exc:
            # Gone, or a plain file where it was (INVALID_ENV: not a netns): `ip netns del` and
            # the runtimes unmount a netns before they unlink its file, and one interrupted in
            # between leaves the file. Either way the netns died and took the veth pair with
            # it; failing here would fail every retry of this DEL and never release the rest.
            if exc.code in (Code.UNKNOWN_CONTAINER, Code.INVALID_ENV):
                return
            raise
        with sandbox, cni_errors(f"deleting {req.ifname} in {req.netns}"):
            pod = links.get(sandbox.ipr, req.ifname)
            if pod is not None:
                links.delete(sandbox.ipr, pod.index)

    # ------------------------------------------------------------------ CHECK, GC, STATUS
    def check(self, req: Request) -> None:
        from loxicni.plugin.check import check

        cfg = load_config(req)
        with attachment_lock(cfg.network, req.container_id, req.ifname) as lock:
            self.still_wanted(
                lock, naming.attachment_key(cfg.network, req.container_id, req.ifname)
            )
            held = Ipam(req, cfg.ipam_type).check()
            with cni_errors("CHECK"), Rtnl() as host, self.open_netns(req) as sandbox:
                check(req, cfg, held, host, sandbox)

    def gc(self, req: Request) -> None:
        from loxicni.plugin.gc import collect

        cfg = load_config(req)
        with cni_errors("GC"):
            collect(req, cfg, self.still_wanted)

    def status(self, req: Request) -> None:
        cfg = load_config(req)
        Ipam(req, cfg.ipam_type).status()
