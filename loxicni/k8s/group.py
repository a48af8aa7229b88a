"""The API group of loxi-cni's custom resources, and the label naming the node an object is
about (PodNetworkInterface, NodeNetwork)."""

from __future__ import annotations

import hashlib

GROUP = "loxicni.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
NODE_LABEL = f"{GROUP}/node"


def node_label(node: str) -> str:
    """A label value naming the node (label values hold at most 63 characters)."""
    if len(node) <= 63:
        return node
    return "h-" + hashlib.sha256(node.encode()).hexdigest()[:40]
