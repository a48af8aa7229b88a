"""The node's NetworkPolicy controller: watches NetworkPolicies, Namespaces and every Pod of
the cluster, compiles them (``compiler``) and keeps ``table inet loxi-cni-policy`` in step.

Three watch threads feed the compiler under one lock; one apply thread turns what changed into
one nft transaction (``PolicyTable.update``), so a burst of events becomes a few transactions,
never a backlog. Nothing is written to the kernel until all three lists have arrived: a table
built from Pods without their Policies would open isolated pods, one built from Policies
without Pods would close them. The first program then *replaces* the table a previous agent
left (one transaction, no window), and the old table keeps enforcing until that moment.

A pod of this node must not run unfiltered between its ADD and the kubelet reporting its
address: the agent tells the controller of every ADD (``attachment_changed``) with the
addresses it gave, and the ADD's answer waits (a bounded time) until the table holds them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from lightkube import Client
from lightkube.resources.core_v1 import Namespace, Pod
from lightkube.resources.networking_v1 import NetworkPolicy

from loxicni.base.logs import get_logger
from loxicni.k8s.attachments import from_record, pod_of
from loxicni.k8s.backoff import Backoff
from loxicni.k8s.netpol.compiler import Compiler
from loxicni.k8s.netpol.metrics import PolicyMetrics
from loxicni.k8s.netpol.model import (
    BadPolicy,
    namespace_labels,
    parse_policy,
    pod_view,
)
from loxicni.k8s.watcher import Watcher
from loxicni.net import sysctl
from loxicni.net.nft import NftError
from loxicni.net.policy_table import PolicyTable
from loxicni.plugin import records

log = get_logger(__name__)

ADD_WAIT = 2.0  # seconds an ADD's answer may wait for its pod's filter to be in place
# Bridged traffic between pods of this node reaches the forward hook only through br_netfilter.
BRIDGE_SYSCTLS = ("net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables")
KINDS = ("policies", "namespaces", "pods")


def ensure_bridge_filtering() -> None:
    """br_netfilter on for this netns (kubeadm's preflight asks the same of every node)."""
    for key in BRIDGE_SYSCTLS:
        try:
            sysctl.ensure(key, "1")
        except FileNotFoundError as exc:
            raise NftError(
                "network policy needs br_netfilter (the bridge's traffic must reach nftables)",
                f"/proc/sys/{key} is missing: modprobe br_netfilter",
            ) from exc


def _result_ips(result: bytes) -> tuple[str, ...]:
    """The addresses of an ADD's answer, in any CNI result version."""
    try:
        doc = json.loads(result)
    except ValueError:
        return ()
    if not isinstance(doc, dict):
        return ()
    out: list[str] = []
    for entry in doc.get("ips") or ():
        if isinstance(entry, dict) and isinstance(entry.get("address"), str):
            out.append(entry["address"].split("/")[0])
    for key in ("ip4", "ip6"):  # CNI 0.1.0 / 0.2.0
        entry = doc.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("ip"), str):
            out.append(entry["ip"].split("/")[0])
    return tuple(out)


class PolicyController:
    def __init__(
        self,
        node: str,
        client: Client | None,
        table: PolicyTable | None = None,
        resync: float = 30.0,
    ) -> None:
        self.node = node
        self.client = client
        self.table = table or PolicyTable()
        self.resync = resync
        self.compiler = Compiler(node)
        self.lock = threading.Condition()
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.listed: set[str] = set()
        self.enforcing = False  # started (br_netfilter in place): the table will be kept
        self.version = 0  # bumped by every change the compiler takes
        self.applied_version = -1
        self.pending_since: float | None = None  # when the oldest unapplied change came
        self.applied_policies: dict[str, str] = {}  # ref -> resourceVersion in the kernel
        self.bad_policies: dict[str, str] = {}  # ref -> why it cannot be enforced
        self.last_error = ""
        self.metrics = PolicyMetrics()
        self.on_selection_changed: list[Callable[[], None]] = []
        self._selection: dict[str, tuple[list[str], list[str]]] = {}
        self.backoff = Backoff(first=0.5, cap=30.0)
        self.watchers: list[Watcher[Any]] = []
        if client is not None:
            self.watchers = [
                Watcher(
                    client, NetworkPolicy, fields={}, namespace="*", stop=self.stop_event,
                    on_list=self._policies_listed, on_event=self._policy_event,
                    name="watch-netpol",
                ),
                Watcher(
                    client, Namespace, fields={}, stop=self.stop_event,
                    on_list=self._namespaces_listed, on_event=self._namespace_event,
                    name="watch-namespaces",
                ),
                Watcher(
                    client, Pod, fields={}, namespace="*", stop=self.stop_event,
                    on_list=self._pods_listed, on_event=self._pod_event, name="watch-all-pods",
                ),
            ]  # fmt: skip

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        try:
            ensure_bridge_filtering()
        except (NftError, OSError) as exc:
            # Pods still get their network; status and metrics say policy is not enforced.
            self.last_error = str(exc)
            self.metrics.errors += 1
            log.error("network policy NOT enforced on this node: %s", exc)
            return
        self.enforcing = True
        self._load_records()
        for watcher in self.watchers:
            watcher.start()
        threading.Thread(target=self._run, name="netpol-apply", daemon=True).start()
        log.info("network policy: enforcing for node %s", self.node)

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def _load_records(self) -> None:
        """This node's pods' addresses as its attachment records hold them (a restart)."""
        for record in records.scan().records:
            att = from_record(record)
            if att is not None and att.pod.uid:
                ips = tuple(ip.split("/")[0] for ip in att.ips)
                with self.lock:
                    self.compiler.set_local_addresses(att.pod.uid, ips)

    # ------------------------------------------------------------------------ changes
    def _changed(self) -> None:
        """Called under the lock after the compiler took a change."""
        self.version += 1
        if self.pending_since is None:
            self.pending_since = time.monotonic()
        self.wake.set()

    def _policies_listed(self, objs: list[Any]) -> None:
        with self.lock:
            known = set(self.compiler.policies)
            seen = {self._take_policy(obj.to_dict()) for obj in objs}
            for ref in known - seen:
                self.compiler.remove_policy(ref)
            self.bad_policies = {r: w for r, w in self.bad_policies.items() if r in seen}
            self.listed.add("policies")
            self._changed()

    def _take_policy(self, obj: dict[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        try:
            policy = parse_policy(obj)
        except BadPolicy as exc:
            # Enforce nothing of it rather than something else than it says.
            log.warning("network policy %s cannot be enforced: %s", ref, exc)
            self.bad_policies[ref] = str(exc)
            self.compiler.remove_policy(ref)
            return ref
        self.bad_policies.pop(ref, None)
        self.compiler.set_policy(policy)
        return ref

    def _policy_event(self, kind: str, obj: Any) -> None:
        with self.lock:
            if kind == "DELETED":
                meta = obj.metadata
                ref = f"{meta.namespace}/{meta.name}"
                self.bad_policies.pop(ref, None)
                changed = self.compiler.remove_policy(ref)
            else:
                self._take_policy(obj.to_dict())
                changed = True
            if changed:
                self._changed()

    def _namespaces_listed(self, objs: list[Any]) -> None:
        with self.lock:
            seen = set()
            for obj in objs:
                parsed = namespace_labels(obj)
                if parsed is not None:
                    seen.add(parsed[0])
                    self.compiler.set_namespace(*parsed)
            for name in set(self.compiler.namespaces) - seen:
                self.compiler.remove_namespace(name)
            self.listed.add("namespaces")
            self._changed()

    def _namespace_event(self, kind: str, obj: Any) -> None:
        parsed = namespace_labels(obj)
        if parsed is None:
            return
        with self.lock:
            if kind == "DELETED":
                changed = self.compiler.remove_namespace(parsed[0])
            else:
                changed = self.compiler.set_namespace(*parsed)
            if changed:
                self._changed()

    def _pods_listed(self, objs: list[Any]) -> None:
        views = [v for v in map(pod_view, objs) if v is not None]
        with self.lock:
            seen = set()
            for view in views:
                seen.add(view.uid)
                self.compiler.set_pod(view)
            for uid in set(self.compiler.pods) - seen:
                self.compiler.remove_pod(uid)
            self.listed.add("pods")
            self._changed()

    def _pod_event(self, kind: str, obj: Any) -> None:
        view = pod_view(obj)
        if view is None:
            return
        with self.lock:
            if kind == "DELETED":
                changed = self.compiler.remove_pod(view.uid)
            else:
                changed = self.compiler.set_pod(view)
            if changed:
                self._changed()
                self.lock.notify_all()  # an ADD may be waiting for its Pod

    def attachment_changed(self, command: str, env: dict[str, str], result: bytes = b"") -> None:
        """The agent served an ADD or DEL. After an ADD, wait (at most ADD_WAIT) until the
        pod's addresses are in the table, so it never runs unfiltered."""
        pod = pod_of(env.get("CNI_ARGS", ""))
        if pod is None or not pod.uid or not self.enforcing:
            return
        ips = _result_ips(result) if command == "ADD" else ()
        deadline = time.monotonic() + ADD_WAIT
        with self.lock:
            if self.compiler.set_local_addresses(pod.uid, ips):
                self._changed()
            if command != "ADD":
                return
            # The Pod normally is in the cache already (the kubelet read it from the API
            # before it called the runtime); its labels decide which policies select it.
            while pod.uid not in self.compiler.pods or self.applied_version < self.version:
                left = deadline - time.monotonic()
                if left <= 0 or self.stop_event.is_set():
                    log.warning(
                        "pod %s/%s: ADD answered before its network policy was in place",
                        pod.namespace, pod.name,
                    )  # fmt: skip
                    return
                self.lock.wait(left)

    # -------------------------------------------------------------------------- apply
    def _run(self) -> None:
        delay = self.resync
        failed = False
        while not self.stop_event.is_set():
            woken = self.wake.wait(delay)
            self.wake.clear()
            if self.stop_event.is_set():
                return
            if not woken and not failed and self.table.applied is not None:
                # The periodic check: is the table still there? Nothing else to do if so.
                if self.table.exists():
                    with self.lock:
                        if self.applied_version == self.version:
                            continue
                else:
                    log.warning("the network policy table is gone; rebuilding it")
                    self.table.applied = None
            try:
                self.apply()
                self.backoff.reset()
                delay = self.resync
                failed = False
            except NftError as exc:
                delay = self.backoff.next_delay()
                failed = True
                self.last_error = str(exc)
                self.metrics.errors += 1
                log.error("network policy: %s; retrying in %.1f s", exc, delay)
            except Exception:
                delay = self.backoff.next_delay()
                failed = True
                self.metrics.errors += 1
                log.exception("network policy apply failed; retrying in %.1f s", delay)

    def apply(self) -> bool:
        """Compile what changed and put it in the kernel; False while the lists are pending."""
        with self.lock:
            if len(self.listed) < len(KINDS):
                return False
            version = self.version
            since = self.pending_since
            self.pending_since = None
            program = self.compiler.program()
            rvs = {ref: p.resource_version for ref, p in self.compiler.policies.items()}
        try:
            sent = self.table.update(program)
        except BaseException:
            with self.lock:
                self.pending_since = since if self.pending_since is None else self.pending_since
            raise
        now = time.monotonic()
        with self.lock:
            self.applied_version = version
            self.applied_policies = rvs
            self.last_error = ""
            self.lock.notify_all()
            selection = {
                self.compiler.pods[uid].ref: self.compiler.selected_by(uid)
                for uid in self.compiler.local_pods()
            }
        if sent and since is not None:
            self.metrics.observe(now - since)
        if selection != self._selection:
            self._selection = selection
            for notify in self.on_selection_changed:
                notify()
        return True

    # ------------------------------------------------------------------------ reports
    def selected_by(self, uid: str) -> tuple[list[str], list[str]]:
        with self.lock:
            return self.compiler.selected_by(uid)

    def status(self) -> dict[str, Any]:
        with self.lock:
            pods = {ref: {"ingress": i, "egress": e} for ref, (i, e) in self._selection.items()}
            return {
                "node": self.node,
                "enforcing": self.enforcing,
                "synced": len(self.listed) == len(KINDS) and self.applied_version == self.version,
                "listed": sorted(self.listed),
                "policies": len(self.compiler.policies),
                "appliedPolicies": dict(self.applied_policies),
                "unenforceable": dict(self.bad_policies),
                "podsWatched": len(self.compiler.pods),
                "isolated": {
                    "ingress": sum(1 for i, _ in self._selection.values() if i),
                    "egress": sum(1 for _, e in self._selection.values() if e),
                },
                "selectedPods": {
                    ref: sel for ref, sel in pods.items() if sel["ingress"] or sel["egress"]
                },
                "transactions": self.table.transactions,
                "rebuilds": self.table.rebuilds,
                "lastUpdateSeconds": self.metrics.last,
                "lastError": self.last_error,
            }

    def render_metrics(self) -> list[str]:
        with self.lock:
            labels = self.compiler.counter_labels()
            policies = len(self.compiler.policies)
            isolated = (
                sum(1 for i, _ in self._selection.values() if i),
                sum(1 for _, e in self._selection.values() if e),
            )
        try:
            counters = self.table.counters()
        except NftError as exc:
            log.warning("cannot read the policy counters: %s", exc)
            counters = {}
        return self.metrics.render(self.table, policies, isolated, counters, labels)
