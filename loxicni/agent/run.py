"""The agent's life: reconcile what the node holds, serve the CNI socket (and metrics, and
Kubernetes mode when asked), stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING

from loxicni.agent import state, teardown
from loxicni.agent.metrics import Metrics
from loxicni.agent.metrics_http import start_metrics
from loxicni.agent.server import AgentServer, AgentState, container_id
from loxicni.base import paths
from loxicni.base.logs import confine_log_files, get_logger
from loxicni.base.version import package_version
from loxicni.ipam import store
from loxicni.net.errors import OverlayError
from loxicni.net.nft import NftError

if TYPE_CHECKING:
    from loxicni.k8s.controller import Controller
    from loxicni.k8s.options import KubeOptions

log = get_logger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s loxi-cni-agent cid=%(container)s %(message)s"


class _ContainerFilter(logging.Filter):
    """Puts the request's container ID on every log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.container = container_id.get()
        return True


def _agent_logging() -> None:
    # A network's logFile: written per request, and only in the log directory (the agent is
    # root, and serves every network on the node).
    confine_log_files(paths.log_dir())
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ContainerFilter())
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().setLevel(logging.INFO)


def _reconcile() -> None:
    report = state.reconcile()
    log.info(
        "reconciled: kept %d, released %d, orphan veths deleted %d, failed %d, quarantined %d, "
        "unused lock files removed %d",
        report.kept,
        len(report.released),
        len(report.orphan_veths),
        len(report.failed),
        len(report.quarantined),
        len(report.lock_files),
    )


def _systemd_listen_fd() -> int | None:
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        return 3
    return None


def _start_kubernetes(kube: KubeOptions, server: AgentServer, agent: AgentState) -> None:
    """Kubernetes mode, imported only here: plugin mode never loads the Kubernetes client."""
    from loxicni.k8s.controller import Controller

    controller = Controller.from_options(kube, server.reaper)
    server.listeners.append(controller.attachment_changed)
    agent.sections["kubernetes"] = controller.status
    config = kube.overlay()
    try:
        teardown.remove_leftovers(config)
    except (OverlayError, NftError, OSError) as exc:
        log.error("cannot remove the overlay of an earlier run: %s", exc)
    if config is not None:
        from loxicni.k8s.crossnode import CrossNode

        cross = CrossNode(kube, controller.api, config, controller.nodeconf)
        agent.sections["crossNode"] = cross.report
        agent.metrics.sources.append(cross.metrics)
        cross.start()
    if kube.network_policy:
        _start_network_policy(kube, controller, server, agent)
    controller.start(watch_node=config is None)


def _start_network_policy(
    kube: KubeOptions, controller: Controller, server: AgentServer, agent: AgentState
) -> None:
    from loxicni.k8s.netpol.controller import PolicyController

    policy = PolicyController(kube.node_name, controller.api.client, resync=kube.resync)
    server.listeners.append(policy.attachment_changed)
    agent.sections["networkPolicy"] = policy.status
    agent.metrics.sources.append(policy.render_metrics)
    controller.policies_of = policy.selected_by
    policy.on_selection_changed.append(controller.wake.set)
    policy.start()


def _stop_on_signals(server: AgentServer) -> None:
    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def run_agent(
    socket_path: str, metrics_address: str | None, kube: KubeOptions | None = None
) -> int:
    _agent_logging()
    store.enable_cache()
    agent = AgentState(Metrics(), package_version())
    _reconcile()
    server = AgentServer(socket_path, agent, _systemd_listen_fd())
    metrics = start_metrics(metrics_address, agent.metrics) if metrics_address else None
    if kube is not None:
        _start_kubernetes(kube, server, agent)
    _stop_on_signals(server)
    log.info("serving on %s (metrics: %s)", socket_path, metrics_address or "off")
    try:
        server.serve_forever()
    finally:
        server.close()
        if metrics is not None:
            metrics.shutdown()
    return 0
