"""The Pods bound to this node, as the watch last saw them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from loxicni.k8s.attachments import NETWORK_STATUS

# A static pod's API object (its mirror) has a UID of its own; the kubelet runs the pod, and
# calls CNI, under the static pod's UID, which the mirror carries in this annotation.
CONFIG_MIRROR = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    network_status: str | None  # our annotation as the Pod holds it
    deleting: bool
    mirror_of: str = ""  # for a mirror pod: the static pod's UID


def mirror_of(meta: Any) -> str:
    """For a mirror pod's metadata, the static pod's UID; else ""."""
    return str((meta.annotations or {}).get(CONFIG_MIRROR, ""))


def pod_info(pod: Any) -> PodInfo | None:
    meta = pod.metadata
    if meta is None or not meta.uid or not meta.name:
        return None
    annotations = meta.annotations or {}
    return PodInfo(
        namespace=meta.namespace or "",
        name=meta.name,
        uid=meta.uid,
        network_status=annotations.get(NETWORK_STATUS),
        deleting=meta.deletionTimestamp is not None,
        mirror_of=mirror_of(meta),
    )


class PodCache:
    """Pods by UID. ``synced`` once a full list has arrived: before that, absence means
    nothing, and no attachment may be taken for an orphan."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_uid: dict[str, PodInfo] = {}
        self.synced = False

    def replace(self, pods: list[PodInfo]) -> None:
        with self._lock:
            self._by_uid = {p.uid: p for p in pods}
            self.synced = True

    def put(self, pod: PodInfo) -> PodInfo | None:
        """Store ``pod``; return what was there before."""
        with self._lock:
            old = self._by_uid.get(pod.uid)
            self._by_uid[pod.uid] = pod
            return old

    def remove(self, uid: str) -> None:
        with self._lock:
            self._by_uid.pop(uid, None)

    def get(self, uid: str) -> PodInfo | None:
        """The Pod of ``uid``: by its own UID, or a mirror pod by its static pod's UID."""
        with self._lock:
            pod = self._by_uid.get(uid)
            if pod is None:
                pod = next((p for p in self._by_uid.values() if p.mirror_of == uid), None)
            return pod

    def find(self, namespace: str, name: str) -> PodInfo | None:
        with self._lock:
            return next(
                (p for p in self._by_uid.values() if (p.namespace, p.name) == (namespace, name)),
                None,
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_uid)
