"""The node's Kubernetes controller: a PodNetworkInterface per attachment, network-status on
its Pod, the node's CNI config, and the release of attachments whose Pod is gone.

The attachment records are the truth about what the node holds; the API is made to match
them. One sync thread does every write: it wakes when the agent serves an ADD or DEL, when
the Pod watch sees a Pod come or go, and every ``resync`` seconds (when it also relists our
resources, so one deleted by hand comes back). Writes are skipped when the API already holds
what we would write.

An attachment whose Pod is gone (deleted while the runtime never sent DEL: a node crash, a
runtime bug) is marked Orphaned; after ``grace_period`` seconds, and only once a GET confirms
that no Pod of that UID exists (the watch may lag), it is DELeted through the plugin with its
recorded config, as the agent's start-up reconcile does, and its resource deleted.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx

from loxicni.base.logs import get_logger
from loxicni.k8s import attachments
from loxicni.k8s.api import Api, ApiError, Node, Pod, connect
from loxicni.k8s.attachments import Attachment
from loxicni.k8s.backoff import Backoff
from loxicni.k8s.group import NODE_LABEL
from loxicni.k8s.nodeconf import NodeConfWriter
from loxicni.k8s.options import KubeOptions
from loxicni.k8s.pods import PodCache, PodInfo, pod_info
from loxicni.k8s.watcher import Watcher
from loxicni.net.reaper import LinkReaper
from loxicni.plugin import records
from loxicni.plugin.release import FAILED, RELEASED, Outcome, release

log = get_logger(__name__)

API_ERRORS = (ApiError, httpx.HTTPError, OSError)
# Releases an orphan's record if ``still(current record)`` holds under its lock.
ReleaseFn = Callable[[records.Record, Callable[[records.Record], bool]], Outcome]


def _fingerprint(obj: dict[str, Any]) -> str:
    """What we own of a PodNetworkInterface, comparable between ours and the API's."""
    meta = obj.get("metadata") or {}
    owners = [o.get("uid") for o in meta.get("ownerReferences") or []]
    labels = {NODE_LABEL: (meta.get("labels") or {}).get(NODE_LABEL)}
    return json.dumps(
        [obj.get("spec"), obj.get("status"), labels, owners], sort_keys=True, default=str
    )


@dataclass
class _Plan:
    desired: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    orphaned: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    by_pod: dict[str, list[Attachment]] = field(default_factory=lambda: defaultdict(list))
    quarantined: set[str] = field(default_factory=set)  # key prefixes of unreadable records


@dataclass
class SyncReport:
    applied: int = 0
    deleted: int = 0
    annotated: int = 0
    released: list[str] = field(default_factory=list)


class Controller:
    def __init__(
        self,
        options: KubeOptions,
        api: Api,
        reaper: LinkReaper | None = None,
        release_fn: ReleaseFn | None = None,
    ) -> None:
        self.options = options
        self.api = api
        self.reaper = reaper
        self.release_fn = release_fn or (lambda record, still: release(record, self.reaper, still))
        self.pods = PodCache()
        self.nodeconf = NodeConfWriter(options)
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.published: dict[tuple[str, str], str] | None = None  # (ns, name) -> fingerprint
        self.annotated: dict[str, str] = {}  # pod UID -> the network-status we wrote
        self.orphan_since: dict[str, float] = {}  # record key -> monotonic time first missed
        # Resources the API refused as they are (say, a namespace being deleted): not sent
        # again until they change or the next relist.
        self.refused: dict[tuple[str, str], str] = {}
        self.last_relist = 0.0
        self.syncs = 0
        self.released_total = 0
        self.backoff = Backoff(first=1.0, cap=30.0)
        # Network policy's view of a pod (by UID): the policies selecting it, for ingress and
        # for egress; shown in its PodNetworkInterface.
        self.policies_of: Callable[[str], tuple[list[str], list[str]]] | None = None
        self.pod_watch = Watcher(
            api.client,
            Pod,
            fields={"spec.nodeName": options.node_name},
            namespace="*",
            on_list=self._pods_listed,
            on_event=self._pod_event,
            stop=self.stop_event,
            name="watch-pods",
        )
        self.node_watch = Watcher(
            api.client,
            Node,
            fields={"metadata.name": options.node_name},
            on_list=self._nodes_listed,
            on_event=self._node_event,
            stop=self.stop_event,
            name="watch-node",
        )

    @classmethod
    def from_options(cls, options: KubeOptions, reaper: LinkReaper | None = None) -> Controller:
        return cls(options, Api(connect(options.kubeconfig), options.node_name), reaper)

    # ---------------------------------------------------------------------- lifecycle
    def start(self, *, watch_node: bool = True) -> None:
        """``watch_node=False``: someone else feeds ``nodeconf`` this node's Node (the
        cross-node overlay, which watches every Node anyway)."""
        self.pod_watch.start()
        if watch_node:
            self.node_watch.start()
        threading.Thread(target=self._run, name="k8s-sync", daemon=True).start()
        log.info(
            "Kubernetes mode: node %s, grace period %.0f s, resync %.0f s",
            self.options.node_name,
            self.options.grace_period,
            self.options.resync,
        )

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def attachment_changed(self, command: str, env: dict[str, str], _result: bytes = b"") -> None:
        """The agent served an ADD or DEL: bring the API in line soon (never blocks)."""
        self.wake.set()

    def status(self) -> dict[str, Any]:
        return {
            "node": self.options.node_name,
            "podsSynced": self.pods.synced,
            "podsWatched": len(self.pods),
            "podCIDRs": list(self.nodeconf.pod_cidrs),
            "cniConfigError": self.nodeconf.error,
            "interfaces": len(self.published or {}),
            "orphans": len(self.orphan_since),
            "released": self.released_total,
            "syncs": self.syncs,
        }

    # ------------------------------------------------------------------------ watches
    def _pods_listed(self, pods: list[Any]) -> None:
        self.pods.replace([p for p in map(pod_info, pods) if p is not None])
        self.wake.set()

    def _pod_event(self, kind: str, pod: Any) -> None:
        info = pod_info(pod)
        if info is None:
            return
        if kind == "DELETED":
            self.pods.remove(info.uid)
            self.wake.set()
            return
        old = self.pods.put(info)
        if old is None or old.network_status != info.network_status:
            self.wake.set()

    def _nodes_listed(self, nodes: list[Any]) -> None:
        for node in nodes:
            self.nodeconf.node_changed(node)

    def _node_event(self, kind: str, node: Any) -> None:
        if kind != "DELETED":
            self.nodeconf.node_changed(node)

    # --------------------------------------------------------------------------- sync
    def _run(self) -> None:
        delay = 0.0
        while not self.stop_event.is_set():
            self.wake.wait(delay)
            self.wake.clear()
            if self.stop_event.is_set():
                return
            try:
                self.sync()
                self.backoff.reset()
                delay = self._next_due()
            except API_ERRORS as exc:
                delay = self.backoff.next_delay()
                log.warning("sync failed (%s); retrying in %.1f s", exc, delay)
                self.published = None  # relist: what we think is there may be stale
            except Exception:
                delay = self.backoff.next_delay()
                log.exception("sync failed; retrying in %.1f s", delay)

    def _next_due(self) -> float:
        due = self.options.resync
        now = time.monotonic()
        for since in self.orphan_since.values():
            due = min(due, since + self.options.grace_period - now)
        return max(due, 0.05)

    def sync(self) -> SyncReport:
        """One pass: records -> resources, annotations; orphans released when due."""
        report = SyncReport()
        now = time.monotonic()
        self.syncs += 1
        published = self._relist_if_due(now)
        plan = self._plan(now, report)
        self._publish(published, plan, report)
        self._annotate_pods(plan.by_pod, report)
        if report.applied or report.deleted or report.annotated or report.released:
            log.info(
                "sync: %d applied, %d deleted, %d pods annotated, %d released",
                report.applied,
                report.deleted,
                report.annotated,
                len(report.released),
            )
        return report

    def _relist_if_due(self, now: float) -> dict[tuple[str, str], str]:
        """Our resources as the API holds them: relisted every ``resync`` (so one deleted by
        hand comes back), else as we last wrote them."""
        if self.published is None or now - self.last_relist >= self.options.resync:
            self.published = {k: _fingerprint(v) for k, v in self.api.interfaces().items()}
            self.refused.clear()
            self.last_relist = now
            self.nodeconf.refresh()
        return self.published

    def _plan(self, now: float, report: SyncReport) -> _Plan:
        """What the API should hold, from the records; orphans past their grace released."""
        plan = _Plan()
        scan = records.scan()
        plan.quarantined = {bad.key[:6] for bad in scan.unreadable}
        live_keys: set[str] = set()
        for record in scan.records:
            att = attachments.from_record(record)
            if att is None:
                continue
            live_keys.add(att.key)
            where = (att.pod.namespace, att.resource_name)
            pod = self._pod_of(att)
            if pod is not None or not self.pods.synced:
                self.orphan_since.pop(att.key, None)
                uid = pod.uid if pod is not None else att.pod.uid
                if uid:
                    # Policy knows a pod by the runtime's UID (a static pod's, not its mirror's).
                    policy_uid = att.pod.uid or uid
                    policies = (
                        self.policies_of(policy_uid) if self.policies_of is not None else None
                    )
                    plan.desired[where] = attachments.resource_body(
                        att, self.options.node_name, uid, policies=policies
                    )
                    plan.by_pod[uid].append(att)
                continue
            # The Pod is gone and no DEL came.
            if self._release_if_due(record, att, now, report):
                continue
            if self.published is not None and where in self.published:
                plan.orphaned[where] = attachments.resource_body(
                    att, self.options.node_name, att.pod.uid, attachments.ORPHANED
                )
        for key in list(self.orphan_since):
            if key not in live_keys:
                del self.orphan_since[key]  # DELeted meanwhile
        return plan

    def _release_if_due(
        self, record: records.Record, att: Attachment, now: float, report: SyncReport
    ) -> bool:
        """Release an orphan once its grace period is over and the API confirms its Pod is
        gone; True if it was released."""
        since = self.orphan_since.setdefault(att.key, now)
        if now - since < self.options.grace_period or not self._confirm_gone(att):
            return False
        outcome = self.release_fn(record, lambda _current: self._pod_of(att) is None)
        if outcome.status == RELEASED:
            self.orphan_since.pop(att.key, None)
            report.released.append(f"{att.pod.namespace}/{att.pod.name} {att.ifname}")
            self.released_total += 1
            log.info(
                "released %s/%s %s (%s, %s): its Pod is gone and no DEL came in %.0f s",
                att.pod.namespace,
                att.pod.name,
                att.ifname,
                att.host_veth,
                ", ".join(att.ips),
                now - since,
            )
            return True
        if outcome.status == FAILED:
            log.warning("release of %s failed: %s", att.resource_name, outcome.error)
        else:
            self.orphan_since.pop(att.key, None)  # changed under us: look again next time
        return False

    def _publish(
        self, published: dict[tuple[str, str], str], plan: _Plan, report: SyncReport
    ) -> None:
        """Apply what differs, mark orphans, delete what no record backs."""
        for where, body in plan.desired.items():
            fingerprint = _fingerprint(body)
            if published.get(where) == fingerprint or self.refused.get(where) == fingerprint:
                continue
            if self._apply(where, body, fingerprint):
                published[where] = fingerprint
                report.applied += 1
        for where, body in plan.orphaned.items():
            fingerprint = _fingerprint(body)
            if published.get(where) != fingerprint:
                if self.api.mark_interface(*where, attachments.ORPHANED):
                    published[where] = fingerprint
                else:
                    del published[where]
        for where in [w for w in published if w not in plan.desired and w not in plan.orphaned]:
            if where[1].rsplit("-", 1)[-1] in plan.quarantined:
                continue  # its record cannot be read: leave what it published alone
            self.api.delete_interface(*where)
            del published[where]
            report.deleted += 1

    def _apply(self, where: tuple[str, str], body: dict[str, Any], fingerprint: str) -> bool:
        """Apply one resource; False if the API refuses this one (the others still go)."""
        try:
            self.api.apply_interface(body)
        except ApiError as exc:
            code = exc.status.code or 0
            if code < 400 or code >= 500 or code in (401, 429):
                raise  # the API, not this resource: the whole sync backs off
            log.warning(
                "the API refused PodNetworkInterface %s/%s (%d): %s",
                *where,
                code,
                exc.status.message,
            )
            self.refused[where] = fingerprint
            return False
        self.refused.pop(where, None)
        return True

    def _annotate_pods(self, by_pod: dict[str, list[Attachment]], report: SyncReport) -> None:
        for uid, atts in by_pod.items():
            if self._annotate(uid, atts):
                report.annotated += 1
        for uid in [u for u in self.annotated if u not in by_pod]:
            del self.annotated[uid]

    def _pod_of(self, att: Attachment) -> PodInfo | None:
        if att.pod.uid:
            return self.pods.get(att.pod.uid)
        return self.pods.find(att.pod.namespace, att.pod.name)

    def _confirm_gone(self, att: Attachment) -> bool:
        """Ask the API: the watch may lag, and a release cannot be undone. A Pod of that name
        answering to the attachment's UID (its own, or as the mirror of a static pod) is
        there."""
        uids = self.api.pod_uids(att.pod.namespace, att.pod.name)
        if uids and (not att.pod.uid or att.pod.uid in uids):
            self.orphan_since.pop(att.key, None)
            return False
        return True

    def _annotate(self, uid: str, atts: list[Attachment]) -> bool:
        status = attachments.network_status(atts)
        pod = self.pods.get(uid)
        current = pod.network_status if pod is not None else self.annotated.get(uid)
        try:
            if current is not None and json.loads(current) == status:
                self.annotated[uid] = current
                return False
        except ValueError:
            pass  # not ours, or damaged: overwrite
        first = atts[0].pod
        namespace, name = (pod.namespace, pod.name) if pod else (first.namespace, first.name)
        if self.api.annotate_network_status(namespace, name, uid, status):
            self.annotated[uid] = json.dumps(status)
            return True
        return False
