"""The Pods bound to this node, as the watch last saw them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from loxicni.k8s.attachments import NETWORK_STATUS


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    network_status: str | None  # our annotation as the Pod holds it
    deleting: bool


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
        with self._lock:
            return self._by_uid.get(uid)

    def find(self, namespace: str, name: str) -> PodInfo | None:
        with self._lock:
            return next(
                (p for p in self._by_uid.values() if (p.namespace, p.name) == (namespace, name)),
                None,
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_uid)
