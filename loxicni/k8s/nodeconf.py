"""Keeps the node's CNI config in step with its Node's pod CIDRs and the operator's template."""

from __future__ import annotations

import threading
from typing import Any

from loxicni.base.logs import get_logger
from loxicni.k8s import cniconf
from loxicni.k8s.nodes import pod_cidrs_of
from loxicni.k8s.options import KubeOptions

log = get_logger(__name__)


class NodeConfWriter:
    """Writes the node's CNI config. With a cross-node mode that encapsulates, pods must get
    the overlay's smaller MTU, which the overlay knows only once it has found the node's
    underlay: until it says (``set_mtu``), a template without an ``mtu`` of its own is not
    written, so no pod is ever made at an MTU its traffic does not fit."""

    def __init__(self, options: KubeOptions) -> None:
        self.options = options
        self.pod_cidrs: list[str] = []
        self.mtu: int | None = None  # the overlay's pod MTU, for templates that set none
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

    def set_mtu(self, mtu: int) -> None:
        """The pod MTU the overlay needs; the file is rewritten if it changes."""
        with self._lock:
            if mtu == self.mtu:
                return
            self.mtu = mtu
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
                if (
                    self.options.encapsulates
                    and self.mtu is None
                    and not cniconf.sets_mtu(template)
                ):
                    self.error = "waiting for the cross-node overlay's pod MTU"
                    return
                conf = cniconf.render(
                    template, self.pod_cidrs, self.mtu, str(self.options.data_root)
                )
                if cniconf.write_atomically(path, conf):
                    self.written += 1
                    log.info("wrote %s for pod CIDRs %s", path, ", ".join(self.pod_cidrs))
                self.error = ""
            except (cniconf.TemplateError, OSError) as exc:
                if str(exc) != self.error:
                    log.error("cannot write the CNI config %s: %s", path, exc)
                self.error = str(exc)
