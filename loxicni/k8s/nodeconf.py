"""Keeps the node's CNI config in step with its Node's pod CIDRs and the operator's template."""

from __future__ import annotations

import threading
from typing import Any

from loxicni.base.logs import get_logger
from loxicni.k8s import cniconf
from loxicni.k8s.options import KubeOptions

log = get_logger(__name__)


def pod_cidrs_of(node: Any) -> list[str]:
    """``spec.podCIDRs`` (dual stack), else the older single ``spec.podCIDR``."""
    spec = node.spec
    if spec is None:
        return []
    if spec.podCIDRs:
        return list(spec.podCIDRs)
    return [spec.podCIDR] if spec.podCIDR else []


class NodeConfWriter:
    def __init__(self, options: KubeOptions) -> None:
        self.options = options
        self.pod_cidrs: list[str] = []
        self.written = 0  # how many times the file was (re)written
        self.error = ""  # why the last attempt wrote nothing, if it failed
        self._lock = threading.Lock()

    def node_changed(self, node: Any) -> None:
        cidrs = pod_cidrs_of(node)
        with self._lock:
            if cidrs != self.pod_cidrs:
                log.info("node %s: pod CIDRs %s", self.options.node_name, ", ".join(cidrs) or "-")
            self.pod_cidrs = cidrs
        self.refresh()

    def refresh(self) -> None:
        """Render and write the config (a changed template is picked up here too)."""
        if self.options.conf_dir is None:
            return
        with self._lock:
            if not self.pod_cidrs:
                self.error = "the Node has no pod CIDR yet"
                return
            path = self.options.conf_dir / self.options.conf_name
            try:
                template = cniconf.load_template(self.options.conf_template)
                conf = cniconf.render(template, self.pod_cidrs, str(self.options.data_root))
                if cniconf.write_atomically(path, conf):
                    self.written += 1
                    log.info("wrote %s for pod CIDRs %s", path, ", ".join(self.pod_cidrs))
                self.error = ""
            except (cniconf.TemplateError, OSError) as exc:
                if str(exc) != self.error:
                    log.error("cannot write the CNI config %s: %s", path, exc)
                self.error = str(exc)
