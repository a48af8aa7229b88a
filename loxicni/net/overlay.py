"""The overlay on one node: make the kernel reach every other node's pods, and undo it.

``sync`` reconciles, it never replays: it reads what the kernel holds of ours (routes marked
with our protocol number, the neighbours and FDB entries of our vxlan devices), compares it
with ``peers.plan``'s desired state and sends only the difference, every request of it in
pipelined batches (``Rtnl.batch``: up to 128 messages per system call, acks read back after).
An agent that restarts finds everything in place and sends nothing, so no flow is disturbed;
a Node change costs a fixed number of reads (one dump per table or device, whatever the
cluster size) and a request per entry that changes; a route deleted by hand is back on the
next sync; a route of anyone else is never changed or deleted, even one in our way.

Order within a sync, so that no route ever points at a missing neighbour: stale routes go
first, then neighbours and FDB entries are set, then routes added or replaced, and stale
neighbours and FDB entries go last.

Route protocol: 76 (``RTPROT_LOXI``), unused by the kernel's list (include/uapi/linux/
rtnetlink.h: 0-4, 8-18, 42, 99, 186-192), by /etc/iproute2/rt_protos, and by the other
cluster networks (Calico marks with 80 and 3, Cilium with 2); 76 is ASCII "L".
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from loxicni.net import neighbours, owned_routes, rtnl, underlay, vxlan
from loxicni.net.errors import OverlayError
from loxicni.net.ip import VERSIONS, IPAddress, IPNetwork, family
from loxicni.net.owned_routes import DEFAULT_METRIC, OwnedRoute
from loxicni.net.peers import Desired, LocalNode, Mode, Peer, PeerRoute, Skipped, plan
from loxicni.net.rtnl import Rtnl
from loxicni.net.vxlan import VxlanLink, VxlanSpec

RTPROT_LOXI = 76


@dataclass(frozen=True)
class OverlayConfig:
    """How this node joins the others; OverlayError at construction if it makes no sense."""

    mode: Mode = Mode.VXLAN
    vni: int = vxlan.DEFAULT_VNI
    port: int = vxlan.DEFAULT_PORT
    protocol: int = RTPROT_LOXI
    table: int = rtnl.RT_TABLE_MAIN
    device4: str = "loxi-vxlan4"
    device6: str = "loxi-vxlan6"

    def __post_init__(self) -> None:
        if not 0 <= self.vni < 1 << 24:
            raise OverlayError(f"VNI {self.vni}: a VXLAN network identifier has 24 bits")
        if not 0 < self.port < 1 << 16:
            raise OverlayError(f"port {self.port}: not a UDP port")
        # 0 would make every delete match any route; 1-4 are the kernel's and the admin's.
        if not rtnl.RTPROT_STATIC < self.protocol < 256:
            raise OverlayError(f"route protocol {self.protocol}: must be 5..255")
        if self.table in (0, 255) or not 0 < self.table < 1 << 32:
            raise OverlayError(f"route table {self.table}: not a table for routes of ours")
        for name in (self.device4, self.device6):
            if not 0 < len(name) < 16 or any(c in name for c in "/: \t\n") or name in (".", ".."):
                raise OverlayError(f"device name {name!r}: not a valid interface name")
        if self.device4 == self.device6:
            raise OverlayError(f"device names: {self.device4!r} for both families")

    def device(self, version: int) -> str:
        return self.device4 if version == 4 else self.device6


@dataclass
class SyncReport:
    """What a sync did: ``requests`` sent that change the kernel, by kind in ``changes``
    ("route add", "route replace", "route del", "neigh set", "neigh del", "fdb set",
    "fdb del"), the ones the kernel refused (all in ``failures``; those of a peer's entries
    also under its name in ``peer_failures``), the peers left out, the devices made, and the
    peers the desired state reaches by each path ({"direct": names, "vxlan": names})."""

    requests: int = 0
    changes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    peer_failures: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)  # name -> "created", "recreated: ..."
    paths: dict[str, set[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class TeardownReport:
    routes: int = 0
    devices: list[str] = field(default_factory=list)


def local_node(
    rt: Rtnl, name: str, node_ips: Iterable[IPAddress], pod_cidrs: Iterable[IPNetwork]
) -> LocalNode:
    """This node, its underlay found from its node IPs (``loxicni.net.underlay.find``)."""
    found = tuple(underlay.find(rt, ip) for ip in node_ips)
    return LocalNode(name=name, underlays=found, pod_cidrs=tuple(pod_cidrs))


def pod_mtu(local: LocalNode, config: OverlayConfig) -> int:
    """The MTU for pod interfaces: the smallest path, vxlan's where vxlan may be used (a pod
    interface carries both families, so both encapsulations must fit)."""
    if not local.underlays:
        raise OverlayError(f"node {local.name} has no node IP")
    if config.mode is Mode.ROUTES:
        return min(u.mtu for u in local.underlays)
    return min(vxlan.device_mtu(u.mtu, u.version) for u in local.underlays)


def _specs(local: LocalNode, config: OverlayConfig) -> dict[int, VxlanSpec]:
    specs: dict[int, VxlanSpec] = {}
    for u in local.underlays:
        pod = local.pod_cidr(u.version)
        specs[u.version] = VxlanSpec(
            name=config.device(u.version),
            vni=config.vni,
            port=config.port,
            local=u.ip,
            underlay=u.index,
            mtu=vxlan.device_mtu(u.mtu, u.version),
            mac=vxlan.vtep_mac(local.name, u.version),
            address=vxlan.vtep_address(pod) if pod is not None else None,
        )
    return specs


def ensure_devices(
    rt: Rtnl, local: LocalNode, config: OverlayConfig
) -> tuple[dict[int, VxlanLink], dict[str, str]]:
    """The vxlan device of each underlay family, made or corrected (``vxlan.ensure``); and
    what was done to which ({name: "created" / "recreated: ..."}, kept ones left out)."""
    links: dict[int, VxlanLink] = {}
    done: dict[str, str] = {}
    for version, spec in _specs(local, config).items():
        links[version], what = vxlan.ensure(rt, spec)
        if what:
            done[spec.name] = what
    return links, done


@dataclass
class _Observed:
    routes: dict[IPNetwork, list[OwnedRoute]]
    neighbours: dict[int, dict[IPAddress, str]]  # per vxlan ifindex
    fdb: dict[int, dict[str, list[IPAddress]]]  # per vxlan ifindex


def _observe(rt: Rtnl, config: OverlayConfig, devices: dict[int, VxlanLink]) -> _Observed:
    routes: dict[IPNetwork, list[OwnedRoute]] = {}
    for v in VERSIONS:
        for route in owned_routes.dump(rt, v, config.protocol, config.table):
            routes.setdefault(route.dst, []).append(route)
    return _Observed(
        routes=routes,
        neighbours={
            dev.index: neighbours.permanent(rt, dev.index, v) for v, dev in devices.items()
        },
        fdb={dev.index: neighbours.fdb(rt, dev.index) for dev in devices.values()},
    )


def _our_devices(rt: Rtnl, config: OverlayConfig) -> dict[int, VxlanLink]:
    found: dict[int, VxlanLink] = {}
    for v in VERSIONS:
        link = vxlan.get(rt, config.device(v))
        if link is not None and link.kind == "vxlan":
            found[v] = link
    return found


class _Change(NamedTuple):
    kind: str  # for the report: "route add", "neigh del", ...
    request: rtnl.Request
    subject: PeerRoute | OwnedRoute | tuple[object, ...]  # formatted only for a failure
    peer: str  # whose entry it is; "" for one of no current peer (a stale entry)

    def describe(self) -> str:
        s = self.subject
        if isinstance(s, PeerRoute):
            return f"route {s.dst} via {s.gateway} dev {s.oif}" + (" onlink" if s.onlink else "")
        if isinstance(s, OwnedRoute):
            return f"route {s.dst} (metric {s.metric})"
        return ("neighbour " if self.kind.startswith("neigh") else "fdb ") + " ".join(map(str, s))


def _route_request(route: PeerRoute, config: OverlayConfig, *, replace: bool) -> rtnl.Request:
    return rtnl.route_set(
        family(route.dst.version),
        route.dst.network_address.packed,
        route.dst.prefixlen,
        gateway=route.gateway.packed,
        oif=route.oif,
        protocol=config.protocol,
        onlink=route.onlink,
        replace=replace,
        table=config.table,
    )


def _same(have: OwnedRoute, want: PeerRoute) -> bool:
    return (have.gateway, have.oif, have.onlink) == (want.gateway, want.oif, want.onlink)


def _diff(desired: Desired, observed: _Observed, config: OverlayConfig) -> list[_Change]:
    """The requests that turn ``observed`` into ``desired``, in a safe order (module doc)."""
    owner = desired.owners
    route_dels: list[_Change] = []
    route_sets: list[_Change] = []
    for dst, owned in observed.routes.items():
        keep = _kept(owned, dst) if dst in desired.routes else None
        for route in sorted(owned, key=lambda r: r.metric):
            if route is not keep:
                request = owned_routes.delete_request(route, config.protocol, config.table)
                route_dels.append(_Change("route del", request, route, owner.get(dst, "")))
    for dst, want in desired.routes.items():
        have = _kept(observed.routes.get(dst, []), dst)
        if have is None:
            request = _route_request(want, config, replace=False)
            route_sets.append(_Change("route add", request, want, owner[dst]))
        elif not _same(have, want):
            request = _route_request(want, config, replace=True)
            route_sets.append(_Change("route replace", request, want, owner[dst]))

    entry_sets: list[_Change] = []
    entry_dels: list[_Change] = []
    for dev, have_neigh in observed.neighbours.items():
        want_neigh = desired.neighbours.get(dev, {})
        for ip in have_neigh.keys() - want_neigh.keys():
            request = rtnl.neigh_del(family(ip.version), dev, ip.packed)
            entry_dels.append(_Change("neigh del", request, (ip, "dev", dev), owner.get(ip, "")))
    for dev, want_neigh in desired.neighbours.items():
        have_neigh = observed.neighbours.get(dev, {})
        for ip, mac in want_neigh.items():
            if have_neigh.get(ip) != mac:
                request = rtnl.neigh_set(family(ip.version), dev, ip.packed, mac)
                subject: tuple[object, ...] = (ip, mac, "dev", dev)
                entry_sets.append(_Change("neigh set", request, subject, owner[ip]))
    for dev, have_fdb in observed.fdb.items():
        want_fdb = desired.fdb.get(dev, {})
        for mac in have_fdb.keys() - want_fdb.keys():
            request = rtnl.fdb_del(dev, mac)
            entry_dels.append(_Change("fdb del", request, (mac, "dev", dev), owner.get(mac, "")))
    for dev, want_fdb in desired.fdb.items():
        have_fdb = observed.fdb.get(dev, {})
        for mac, ip in want_fdb.items():
            if have_fdb.get(mac) != [ip]:
                request = rtnl.fdb_set(dev, mac, ip.packed)
                subject = (mac, "dst", ip, "dev", dev)
                entry_sets.append(_Change("fdb set", request, subject, owner[mac]))
    return route_dels + entry_sets + route_sets + entry_dels


def _kept(owned: list[OwnedRoute], dst: IPNetwork) -> OwnedRoute | None:
    """Of our routes to ``dst``, the one a replace would overwrite (the kernel's default
    metric, which ours are added with); any other of ours there is extra."""
    return next((r for r in owned if r.metric == DEFAULT_METRIC[dst.version]), None)


def sync(rt: Rtnl, local: LocalNode, peers: Iterable[Peer], config: OverlayConfig) -> SyncReport:
    """Make the kernel reach ``peers`` as ``config.mode`` says, changing only what differs.

    Refusals by the kernel do not stop the rest; they are in the report (a route of another
    protocol in the way of ours, for one: EEXIST, and it stays). OverlayError if a vxlan
    device cannot be made. One sync at a time per node: two at once would both send the
    difference they saw.
    """
    report = SyncReport()
    if config.mode is Mode.ROUTES:
        devices = _our_devices(rt, config)  # left from another mode: emptied, not deleted
        indexes: dict[int, int] = {}
    else:
        devices, report.devices = ensure_devices(rt, local, config)
        indexes = {v: link.index for v, link in devices.items()}
    desired = plan(local, list(peers), config.mode, indexes)
    report.skipped = desired.skipped
    report.paths = desired.paths()
    changes = _diff(desired, _observe(rt, config, devices), config)
    results = rt.batch([change.request for change in changes])
    report.requests = len(changes)
    for change, error in zip(changes, results, strict=True):
        if error is None:
            report.changes[change.kind] += 1
            continue
        if change.kind == "route add" and error.errno == errno.EEXIST:
            failure = f"{change.describe()}: a route of another protocol is in the way"
        else:
            failure = f"{change.describe()}: {error}"
        report.failures.append(failure)
        if change.peer:
            report.peer_failures.setdefault(change.peer, []).append(failure)
    return report


def teardown(rt: Rtnl, config: OverlayConfig) -> TeardownReport:
    """Remove what is ours and nothing else: the routes marked with our protocol, then our
    vxlan devices (their FDB, neighbours and remaining routes go with them)."""
    report = TeardownReport()
    requests = [
        owned_routes.delete_request(route, config.protocol, config.table)
        for v in VERSIONS
        for route in sorted(
            owned_routes.dump(rt, v, config.protocol, config.table), key=lambda r: r.metric
        )
    ]
    for error in rt.batch(requests):
        if error is None:
            report.routes += 1
        elif error.errno != errno.ESRCH:  # gone meanwhile
            raise OverlayError(f"cannot delete an overlay route: {error}")
    for v in VERSIONS:
        if vxlan.delete(rt, config.device(v)):
            report.devices.append(config.device(v))
    return report
