"""Cross-node networking in Kubernetes mode: this node reaches the pods of every other node.

Every agent watches all Nodes (their pod CIDRs and InternalIPs: the Kubernetes API is the only
state the nodes share) and programs its own node through ``loxicni.net.overlay``, which
reconciles: it reads what the kernel holds of ours and sends only the difference. Hence:

* one thread does every sync, on a netlink socket of its own: two syncs at once would both
  send the difference they saw;
* a Node event that changes nothing the overlay uses (most are status reports) costs nothing;
  one that does wakes the thread, and events arriving together (within COALESCE) make one
  sync: a sync is O(nodes) of CPU, a Node change O(1) of kernel requests;
* every ``resync`` seconds a sync runs anyway, repairing what was changed by hand;
* nothing is synced before the first full list of Nodes: until then an absent Node means
  nothing; from the first sync on, the entries of Nodes deleted while the agent was down go;
* a restarted agent finds everything in place and sends nothing: no flow is disturbed.

Each sync also keeps the masquerade table's cluster networks (the pod CIDRs of every Node: pod
to pod traffic is never masqueraded) and this node's NodeNetwork, and gives the CNI config
writer the pod MTU the overlay needs. Without its own Node, or without a node IP it can find on
its interfaces, the agent changes nothing in the kernel: a Node that vanishes for a moment, or
an address being moved, must not cut the node off.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx

from loxicni.base.logs import get_logger
from loxicni.k8s import nodenetwork
from loxicni.k8s.api import Api, ApiError, Node
from loxicni.k8s.backoff import Backoff
from loxicni.k8s.nodeconf import NodeConfWriter
from loxicni.k8s.nodenetwork import NodeNetworkState, Problem, Vtep
from loxicni.k8s.nodes import NodeInfo, NodeTable, node_info
from loxicni.k8s.options import KubeOptions
from loxicni.k8s.watcher import Watcher
from loxicni.net import masq, overlay, overlay_record, sysctl, underlay, vxlan
from loxicni.net.errors import OverlayError
from loxicni.net.ip import IPNetwork
from loxicni.net.nft import NftError
from loxicni.net.overlay import OverlayConfig, SyncReport
from loxicni.net.peers import LocalNode, Mode
from loxicni.net.rtnl import Rtnl
from loxicni.net.underlay import Underlay

log = get_logger(__name__)

COALESCE = 0.05  # seconds: Node events this close together make one sync
HEARTBEAT = 300.0  # the NodeNetwork is rewritten this often at least (its lastSyncTime)
LIST_CHUNK = 500  # Nodes per page of a list: bounded responses in large clusters
API_ERRORS = (ApiError, httpx.HTTPError, OSError)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _family(version: int) -> str:
    return f"IPv{version}"


@dataclass
class CrossNodeStatus:
    """What the last sync found: for ``loxi-cni status``, /metrics and the NodeNetwork."""

    node_ips: list[str] = field(default_factory=list)
    pod_cidrs: list[str] = field(default_factory=list)
    pod_mtu: int | None = None
    nodes: int = 0  # Nodes watched, this one included
    peers: int = 0  # other Nodes
    direct: set[str] = field(default_factory=set)  # peers programmed, by path
    vxlan: set[str] = field(default_factory=set)
    errors: dict[str, list[str]] = field(default_factory=dict)  # per peer
    failures: list[str] = field(default_factory=list)  # refusals of no current peer's entries
    last_sync: str = ""  # RFC 3339, of the last sync that ran
    last_sync_unix: float = 0.0
    last_duration: float = 0.0
    last_requests: int = 0
    last_changes: dict[str, int] = field(default_factory=dict)
    reason: str = "Starting"
    message: str = "waiting for the list of Nodes"
    ready: bool = False


class CrossNode:
    def __init__(
        self,
        options: KubeOptions,
        api: Api,
        config: OverlayConfig,
        nodeconf: NodeConfWriter | None = None,
    ) -> None:
        self.options = options
        self.name = options.node_name
        self.api = api
        self.config = config
        self.nodeconf = nodeconf
        self.nodes = NodeTable()
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.backoff = Backoff(first=0.5, cap=max(1.0, options.resync))
        self.status = CrossNodeStatus()
        self._lock = threading.Lock()  # guards status and the counters below
        self.syncs = 0
        self.sync_failures = 0
        self.changes_total: Counter[str] = Counter()
        self._masq_done: frozenset[IPNetwork] | None = None
        self._published = ""  # fingerprint of the NodeNetwork last written
        self._publish_error = ""  # why the last write failed (logged once)
        self._published_at = 0.0
        self._transition = ""
        self._was_ready: bool | None = None
        self._logged: tuple[str, ...] = ()  # the problems last logged
        self.watcher: Watcher[Any] = Watcher(
            api.client,
            Node,
            fields={},
            on_list=self._listed,
            on_event=self._event,
            stop=self.stop_event,
            name="watch-nodes",
            chunk_size=LIST_CHUNK,
        )

    # ---------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.watcher.start()
        threading.Thread(target=self._run, name="cross-node", daemon=True).start()
        vxlan_ = (
            f", vxlan VNI {self.config.vni} port {self.config.port} devices "
            f"{self.config.device4}/{self.config.device6}"
            if self.options.encapsulates
            else ""
        )
        log.info(
            "cross-node %s: node %s%s, resync %.0f s",
            self.config.mode,
            self.name,
            vxlan_,
            self.options.resync,
        )

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    # ------------------------------------------------------------------------ watches
    def _listed(self, nodes: list[Any]) -> None:
        infos = [i for i in map(node_info, nodes) if i is not None]
        for node in nodes:
            if node.metadata is not None and node.metadata.name == self.name:
                self._own_changed(node)
        if self.nodes.replace(infos):
            self.wake.set()

    def _event(self, kind: str, node: Any) -> None:
        info = node_info(node)
        if info is None:
            return
        if info.name == self.name and kind != "DELETED":
            self._own_changed(node)
        changed = self.nodes.remove(info.name) if kind == "DELETED" else self.nodes.put(info)
        if changed:
            self.wake.set()

    def _own_changed(self, node: Any) -> None:
        if self.nodeconf is not None:
            self.nodeconf.node_changed(node)

    # ------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        with Rtnl() as rt:
            due = 0.0  # monotonic time of the next periodic sync
            while not self.stop_event.is_set():
                woke = self.wake.wait(max(0.0, due - time.monotonic()))
                if self.stop_event.is_set():
                    return
                if woke:
                    self.stop_event.wait(COALESCE)  # let the rest of a burst arrive
                self.wake.clear()
                if not self.nodes.listed:
                    due = time.monotonic() + self.options.resync
                    continue
                # a full pass (masquerade sets and NodeNetwork read back too) at least every
                # resync, however often Node events come
                periodic = time.monotonic() >= due
                try:
                    self.sync(rt, periodic=periodic)
                    self.backoff.reset()
                    due = time.monotonic() + self.options.resync
                except (OverlayError, NftError, OSError) as exc:
                    delay = self.backoff.next_delay()
                    self._failed(f"{exc}", delay)
                    due = time.monotonic() + delay
                except Exception as exc:
                    delay = self.backoff.next_delay()
                    log.exception("cross-node sync failed; retrying in %.1f s", delay)
                    self._failed(f"unexpected error: {exc}", delay)
                    due = time.monotonic() + delay

    def _failed(self, why: str, delay: float) -> None:
        with self._lock:
            self.sync_failures += 1
            first = self.status.reason != nodenetwork.SYNC_FAILED or self.status.message != why
            self.status.ready = False
            self.status.reason, self.status.message = nodenetwork.SYNC_FAILED, why
        if first:
            log.error("cross-node sync failed: %s; retrying in %.1f s", why, delay)

    # --------------------------------------------------------------------------- sync
    def sync(self, rt: Rtnl, *, periodic: bool = False) -> SyncReport | None:
        """One pass; None when the kernel was left alone (no Node of ours, no node IP)."""
        started = time.monotonic()
        everyone = self.nodes.snapshot()
        own = next((n for n in everyone if n.name == self.name), None)
        if own is None:
            self._hold("NodeNotFound", f"Node {self.name} is not in the API", everyone)
            return None
        found, missing = self._underlays(rt, own)
        if not found:
            why = "; ".join(missing) or f"Node {self.name} has no InternalIP address"
            self._hold(nodenetwork.NO_NODE_IP, why, everyone, own)
            return None
        local = LocalNode(name=own.name, underlays=tuple(found), pod_cidrs=own.pod_cidrs)
        # pods need a smaller MTU only where their traffic may be encapsulated
        mtu = overlay.pod_mtu(local, self.config) if self.options.encapsulates else None
        if self.nodeconf is not None and mtu is not None:
            self.nodeconf.set_mtu(mtu)
        sysctl.forwarding_on(local.underlay(4) is not None, local.underlay(6) is not None)
        overlay_record.save(self.config)  # before the first change: teardown must find it
        report = overlay.sync(rt, local, [n.peer for n in everyone], self.config)
        masq_failure = self._exempt_from_masquerade(everyone, periodic)
        if masq_failure:
            report.failures.append(masq_failure)
        self._record(report, local, own, everyone, missing, time.monotonic() - started)
        self._publish(own, local, mtu, periodic)
        return report

    def _underlays(self, rt: Rtnl, own: NodeInfo) -> tuple[list[Underlay], list[str]]:
        """The interface of each of the Node's InternalIPs on this node, and why not."""
        found: list[Underlay] = []
        missing: list[str] = []
        for ip in own.node_ips:
            try:
                found.append(underlay.find(rt, ip))
            except OverlayError as exc:
                missing.append(str(exc))
        return found, missing

    def _exempt_from_masquerade(self, everyone: list[NodeInfo], periodic: bool) -> str:
        """Every Node's pod CIDRs into the masquerade table's cluster sets: read back at
        every resync (repairing them), written only when they differ. Why it failed, or "":
        the overlay works without it, so a failure is reported, not raised."""
        want = frozenset(net for n in everyone for net in n.pod_cidrs)
        if want == self._masq_done and not periodic:
            return ""
        self._masq_done = None
        try:
            if masq.set_cluster_networks(want):
                log.info("masquerade: %d cluster pod networks exempt", len(want))
        except NftError as exc:
            return f"masquerade exemption of the cluster's pod networks: {exc}"
        self._masq_done = want
        return ""

    def _hold(
        self, reason: str, message: str, everyone: list[NodeInfo], own: NodeInfo | None = None
    ) -> None:
        """Leave the kernel as it is, and say why."""
        with self._lock:
            new = (reason, message) != (self.status.reason, self.status.message)
            self.status.ready = False
            self.status.reason, self.status.message = reason, message
            self.status.nodes = len(everyone)
            self.status.peers = len(everyone) - (own is not None)
        if new:
            log.warning("cross-node: %s; the kernel is left as it is", message)
        if own is not None:
            self._publish(own, None, None, periodic=False)

    def _record(
        self,
        report: SyncReport,
        local: LocalNode,
        own: NodeInfo,
        everyone: list[NodeInfo],
        missing: list[str],
        duration: float,
    ) -> None:
        errors: dict[str, list[str]] = {}
        for skipped in report.skipped:
            reason = f"{_family(skipped.version)}: {skipped.reason}"
            errors.setdefault(skipped.peer, []).append(reason)
        for peer, failures in report.peer_failures.items():
            errors.setdefault(peer, []).extend(failures)
        of_peers = {f for failures in report.peer_failures.values() for f in failures}
        stale = [f for f in report.failures if f not in of_peers]
        direct = report.paths.get("direct", set()) - errors.keys()
        vxlan_ = report.paths.get("vxlan", set()) - errors.keys()
        if report.failures:
            reason = nodenetwork.SYNC_FAILED
            message = f"{len(report.failures)} changes failed, the first: {report.failures[0]}"
        elif errors:
            reason = nodenetwork.PEERS_SKIPPED
            message = "; ".join(f"{p}: {', '.join(e)}" for p, e in sorted(errors.items()))
        elif not own.pod_cidrs:
            reason, message = nodenetwork.NO_POD_CIDR, f"Node {self.name} has no pod CIDR"
        else:
            reason = nodenetwork.SYNCED
            message = f"{len(direct) + len(vxlan_)} peers programmed"
        if missing:
            message += "; " + "; ".join(missing)
        with self._lock:
            self.syncs += 1
            self.changes_total.update(report.changes)
            s = self.status
            s.node_ips = [str(u.ip) for u in local.underlays]
            s.pod_cidrs = [str(n) for n in own.pod_cidrs]
            s.pod_mtu = overlay.pod_mtu(local, self.config)
            s.nodes, s.peers = len(everyone), len(everyone) - 1
            s.direct, s.vxlan, s.errors, s.failures = direct, vxlan_, errors, stale
            s.last_sync, s.last_sync_unix = _now(), time.time()
            s.last_duration, s.last_requests = duration, report.requests
            s.last_changes = dict(report.changes)
            s.ready = reason == nodenetwork.SYNCED
            s.reason, s.message = reason, message
        if report.requests or report.devices:
            log.info(
                "cross-node sync: %d peers (%d direct, %d vxlan), %d requests %s%s in %.3f s",
                len(everyone) - 1,
                len(direct),
                len(vxlan_),
                report.requests,
                dict(report.changes),
                f", devices {report.devices}" if report.devices else "",
                duration,
            )
        problems = tuple(f"{p}: {m}" for p, ms in sorted(errors.items()) for m in ms) + tuple(
            report.failures
        )
        if problems != self._logged:
            for problem in problems:
                if problem not in self._logged:
                    log.warning("cross-node: %s", problem)
            self._logged = problems

    # ------------------------------------------------------------------ NodeNetwork
    def _state(self, own: NodeInfo, local: LocalNode | None, mtu: int | None) -> NodeNetworkState:
        with self._lock:
            s = self.status
            if s.ready != self._was_ready:
                self._was_ready, self._transition = s.ready, _now()
            vteps: list[Vtep] = []
            if local is not None and self.config.mode is not Mode.ROUTES:
                vteps = [self._vtep(u, own) for u in local.underlays]
            return NodeNetworkState(
                node=self.name,
                node_uid=own.uid,
                mode=str(self.config.mode),
                pod_cidrs=[str(n) for n in own.pod_cidrs],
                node_ips=[str(ip) for ip in own.node_ips],
                pod_mtu=mtu,
                vteps=vteps,
                peers_known=s.peers,
                direct=len(s.direct),
                vxlan=len(s.vxlan),
                problems=[
                    Problem(peer, message)
                    for peer, messages in sorted(s.errors.items())
                    for message in messages
                ]
                + [Problem("", f) for f in s.failures],
                last_sync=s.last_sync,
                ready=s.ready,
                reason=s.reason,
                message=s.message,
                transition=self._transition,
            )

    def _vtep(self, u: Underlay, own: NodeInfo) -> Vtep:
        pod = own.peer.pod_cidr(u.version)
        return Vtep(
            family=_family(u.version),
            device=self.config.device(u.version),
            mac=vxlan.vtep_mac(own.name, u.version),
            vni=self.config.vni,
            port=self.config.port,
            address=str(vxlan.vtep_address(pod).ip) if pod is not None else "",
            local=str(u.ip),
            underlay=u.name,
        )

    def _publish(
        self, own: NodeInfo, local: LocalNode | None, mtu: int | None, periodic: bool
    ) -> None:
        """Write the NodeNetwork when it changed, at the heartbeat, or when a periodic sync
        finds the API's copy differs (deleted or edited by hand)."""
        body = nodenetwork.body(self._state(own, local, mtu))
        mine = nodenetwork.fingerprint(body)
        now = time.monotonic()
        try:
            fresh = mine == self._published and now - self._published_at < HEARTBEAT
            if fresh and periodic:  # is it still there as we wrote it?
                current = self.api.node_network()
                fresh = current is not None and nodenetwork.fingerprint(current) == mine
            if fresh:
                return
            self.api.apply_node_network(body)
            self._published, self._published_at = mine, now
            self._publish_error = ""
        except API_ERRORS as exc:
            self._published = ""  # try again at the next sync
            if str(exc) != self._publish_error:
                log.warning("cannot write NodeNetwork %s: %s", self.name, exc)
            self._publish_error = str(exc)

    # ------------------------------------------------------------------ reporting
    def report(self) -> dict[str, Any]:
        """The ``crossNode`` section of ``loxi-cni status``."""
        with self._lock:
            s = self.status
            return {
                "mode": str(self.config.mode),
                "node": self.name,
                "nodeIPs": list(s.node_ips),
                "podCIDRs": list(s.pod_cidrs),
                "podMTU": s.pod_mtu,
                "vxlan": {
                    "vni": self.config.vni,
                    "port": self.config.port,
                    "devices": [self.config.device4, self.config.device6],
                },
                "nodesWatched": s.nodes,
                "nodesListed": self.nodes.listed,
                "peers": s.peers,
                "peersProgrammed": len(s.direct) + len(s.vxlan),
                "direct": len(s.direct),
                "viaVxlan": len(s.vxlan),
                "errors": {peer: list(e) for peer, e in s.errors.items()},
                "failures": list(s.failures),
                "lastSync": s.last_sync,
                "lastSyncSeconds": round(s.last_duration, 6),
                "lastSyncRequests": s.last_requests,
                "lastSyncChanges": dict(s.last_changes),
                "syncs": self.syncs,
                "syncFailures": self.sync_failures,
                "ready": s.ready,
                "reason": s.reason,
                "message": s.message,
                "nodeNetworkError": self._publish_error,
            }

    def metrics(self) -> list[str]:
        """Prometheus lines (the agent's /metrics)."""
        with self._lock:
            s = self.status
            lines = [
                "# HELP loxi_cni_cross_node_peers Other nodes whose pods this node reaches, "
                "by path.",
                "# TYPE loxi_cni_cross_node_peers gauge",
                f'loxi_cni_cross_node_peers{{path="direct"}} {len(s.direct)}',
                f'loxi_cni_cross_node_peers{{path="vxlan"}} {len(s.vxlan)}',
                "# HELP loxi_cni_cross_node_nodes Nodes watched, this one included.",
                "# TYPE loxi_cni_cross_node_nodes gauge",
                f"loxi_cni_cross_node_nodes {s.nodes}",
                "# HELP loxi_cni_cross_node_peer_errors Problems with a peer (a family left "
                "out, an entry refused); only peers with problems.",
                "# TYPE loxi_cni_cross_node_peer_errors gauge",
            ]
            for peer, errors in sorted(s.errors.items()):
                name = peer.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'loxi_cni_cross_node_peer_errors{{peer="{name}"}} {len(errors)}')
            lines += [
                "# HELP loxi_cni_cross_node_ready 1 if every peer is programmed.",
                "# TYPE loxi_cni_cross_node_ready gauge",
                f"loxi_cni_cross_node_ready {int(s.ready)}",
                "# HELP loxi_cni_cross_node_last_sync_timestamp_seconds When the last sync ran.",
                "# TYPE loxi_cni_cross_node_last_sync_timestamp_seconds gauge",
                f"loxi_cni_cross_node_last_sync_timestamp_seconds {s.last_sync_unix:.3f}",
                "# HELP loxi_cni_cross_node_last_sync_seconds How long the last sync took.",
                "# TYPE loxi_cni_cross_node_last_sync_seconds gauge",
                f"loxi_cni_cross_node_last_sync_seconds {s.last_duration:.6f}",
                "# HELP loxi_cni_cross_node_syncs_total Syncs run.",
                "# TYPE loxi_cni_cross_node_syncs_total counter",
                f"loxi_cni_cross_node_syncs_total {self.syncs}",
                "# HELP loxi_cni_cross_node_sync_failures_total Syncs that could not run.",
                "# TYPE loxi_cni_cross_node_sync_failures_total counter",
                f"loxi_cni_cross_node_sync_failures_total {self.sync_failures}",
                "# HELP loxi_cni_cross_node_changes_total Kernel changes made, by kind.",
                "# TYPE loxi_cni_cross_node_changes_total counter",
            ]
            for kind, n in sorted(self.changes_total.items()):
                lines.append(f'loxi_cni_cross_node_changes_total{{kind="{kind}"}} {n}')
        return lines
