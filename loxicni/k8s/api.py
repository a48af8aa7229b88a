"""The few API calls the controller makes, on one lightkube client.

Pods are annotated through their ``status`` subresource, like the kubelet (and Multus) write
a pod's status: the agent's role then needs ``patch`` on ``pods/status`` only, never on
``pods`` (which would let it change any pod's spec). Every patch carries the Pod's UID as a
precondition, so a Pod recreated under the same name is never annotated with the old one's
interfaces.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import httpx2 as httpx
from lightkube import ApiError, Client, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.resources.core_v1 import Node, Pod, PodStatus
from lightkube.types import PatchType

from loxicni.k8s import attachments, nodenetwork
from loxicni.k8s.group import GROUP, NODE_LABEL, VERSION, node_label
from loxicni.k8s.pods import mirror_of

FIELD_MANAGER = "loxi-cni-agent"
REQUEST_TIMEOUT = 10.0

PodNetworkInterface = create_namespaced_resource(
    GROUP, VERSION, attachments.KIND, attachments.PLURAL
)

NodeNetwork = create_global_resource(GROUP, VERSION, nodenetwork.KIND, nodenetwork.PLURAL)

__all__ = [
    "FIELD_MANAGER",
    "Api",
    "ApiError",
    "Node",
    "NodeNetwork",
    "Pod",
    "PodNetworkInterface",
    "connect",
]


def _quiet_http_logs() -> None:
    """httpx logs every request at INFO: a line per watch and list would drown the agent's."""
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)


# TCP keepalive on every connection to the API server, as client-go sets it: lightkube reads
# watch streams without a read timeout, so a connection that dies silently (a node losing its
# route to the API server) is found by the kernel's probes instead (idle 30 s, then 3 probes
# 10 s apart), and a write the peer never acknowledges fails after TCP_USER_TIMEOUT.
_KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 60_000),
]


def connect(kubeconfig: str | None) -> Client:
    """A client from a kubeconfig file, or in-cluster (the pod's ServiceAccount token, re-read
    when it rotates)."""
    _quiet_http_logs()
    config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_service_account()
    single = config.get()
    if single is None or single.user is None:
        raise ValueError("the kubeconfig names no current context with a user")
    # A transport of our own for the socket options; it must carry the TLS settings itself,
    # since httpx applies the client's own only to the transport it makes.
    verify = verify_cluster(single.cluster, single.user, single.abs_file, trust_env=False)
    transport = httpx.HTTPTransport(verify=verify, socket_options=_KEEPALIVE)
    return Client(
        config=config,
        timeout=httpx.Timeout(REQUEST_TIMEOUT),
        field_manager=FIELD_MANAGER,
        trust_env=False,
        transport=transport,
    )


class Api:
    def __init__(self, client: Client, node: str) -> None:
        self.client = client
        self.node = node

    def apply_interface(self, body: dict[str, Any]) -> None:
        """Create or update a PodNetworkInterface (server-side apply: one call either way)."""
        obj = PodNetworkInterface(**body)
        self.client.apply(obj, field_manager=FIELD_MANAGER, force=True)

    def delete_interface(self, namespace: str, name: str) -> None:
        """Delete a PodNetworkInterface; one already gone is fine."""
        try:
            self.client.delete(PodNetworkInterface, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    def mark_interface(self, namespace: str, name: str, state: str) -> bool:
        """Set an existing PodNetworkInterface's state; False if it is gone. A patch, never an
        apply: an Orphaned one's owner is gone, and recreating it would only feed the GC."""
        patch = {"status": {"state": state}}
        try:
            self.client.patch(
                PodNetworkInterface, name, patch, namespace=namespace, patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise
        return True

    def interfaces(self) -> dict[tuple[str, str], dict[str, Any]]:
        """This node's PodNetworkInterfaces, by (namespace, name)."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        selector: dict[str, Any] = {NODE_LABEL: node_label(self.node)}
        for obj in self.client.list(PodNetworkInterface, namespace="*", labels=selector):
            data = dict(obj)
            meta = data.get("metadata") or {}
            out[(meta.get("namespace", ""), meta.get("name", ""))] = data
        return out

    def apply_node_network(self, body: dict[str, Any]) -> None:
        """Create or update this node's NodeNetwork (server-side apply)."""
        self.client.apply(NodeNetwork(**body), field_manager=FIELD_MANAGER, force=True)

    def node_network(self) -> dict[str, Any] | None:
        """This node's NodeNetwork as the API holds it; None if there is none."""
        try:
            return dict(self.client.get(NodeNetwork, self.node))
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    def pod_uids(self, namespace: str, name: str) -> set[str]:
        """The UIDs the Pod now called ``namespace/name`` answers to: its own, and for a mirror
        pod its static pod's; empty if there is no such Pod."""
        try:
            pod = self.client.get(Pod, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return set()
            raise
        meta = pod.metadata
        if meta is None:
            return set()
        return {meta.uid or "", mirror_of(meta)} - {""}

    def annotate_network_status(
        self, namespace: str, name: str, uid: str, status: list[dict[str, Any]]
    ) -> bool:
        """Set the Pod's network-status annotation; False if that Pod (this UID) is gone."""
        patch = {
            "metadata": {
                "uid": uid,  # precondition: the apiserver refuses a patch of another Pod
                "annotations": {attachments.NETWORK_STATUS: json.dumps(status, indent=1)},
            }
        }
        try:
            self.client.patch(
                PodStatus, name, patch, namespace=namespace, patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            if exc.status.code in (404, 409, 422):
                return False
            raise
        return True
