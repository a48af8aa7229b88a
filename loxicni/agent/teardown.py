"""Removing what the agent made for the node, for an uninstall or a change of cross-node mode.

The pods' own network (veths, addresses, masquerade entries) goes with each pod's DEL. What
the agent made for the node stays when the agent stops, on purpose: a restart must not disturb
a single flow. That is the cross-node overlay (routes marked with its protocol, its vxlan
devices), the masquerade table's cluster networks, the CNI config it wrote and the pods'
bridge. ``loxi-cni teardown`` removes all of it, in the node's netns, with the agent stopped:

* the overlay as the agent recorded it in its state dir (``loxicni.net.overlay_record``), or
  by the default settings without a record: only routes carrying its protocol number, only
  vxlan links of its device names;
* the cluster networks of the masquerade table, then the table if no set holds anything;
* the CNI config file, then each bridge it names, unless a port is still attached (a pod not
  yet DELeted keeps it, and is reported);
* the network policy table (it outlives the agent so a restart never opens an isolated pod).

An agent started with other overlay settings than the recorded ones, or with no cross-node
mode, removes the recorded overlay itself (``remove_leftovers``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from loxicni.base.logs import get_logger
from loxicni.net import links, masq, overlay, overlay_record
from loxicni.net.overlay import OverlayConfig
from loxicni.net.policy_table import PolicyTable
from loxicni.net.rtnl import Rtnl
from loxicni.plugin.config import DEFAULT_BRIDGE

log = get_logger(__name__)


@dataclass
class TeardownReport:
    routes: int = 0
    devices: list[str] = field(default_factory=list)
    cluster_networks: int = 0
    masquerade_table: bool = False
    policy_table: bool = False
    conf: str = ""  # the CNI config removed
    bridges: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # left in place, and why


def remove_leftovers(current: OverlayConfig | None) -> None:
    """At the agent's start: remove an overlay an earlier run recorded that ``current`` (None:
    no cross-node mode) would not find, so would leave behind."""
    recorded = overlay_record.load()
    if recorded is None or not overlay_record.left_behind(recorded, current):
        return
    with Rtnl() as rt:
        report = overlay.teardown(rt, recorded)
    if current is None:
        masq.set_cluster_networks([])
        overlay_record.forget()
    log.info(
        "removed the overlay of an earlier run (%s, devices %s/%s): %d routes, devices %s",
        recorded.mode,
        recorded.device4,
        recorded.device6,
        report.routes,
        ", ".join(report.devices) or "none",
    )


def _bridges_of(conf: object) -> list[str]:
    """The bridges a CNI config (a conflist or a single plugin's) makes for loxi-cni."""
    if not isinstance(conf, dict):
        return []
    plugins = conf.get("plugins") if "plugins" in conf else [conf]
    if not isinstance(plugins, list):
        return []
    return [
        str(p.get("bridge") or DEFAULT_BRIDGE)
        for p in plugins
        if isinstance(p, dict) and p.get("type") == "loxi-cni"
    ]


def teardown(conf_path: Path | None, default: OverlayConfig | None = None) -> TeardownReport:
    """Remove the node's overlay, cluster networks, CNI config and idle bridges (module doc).
    ``default``: the overlay settings to use when the agent left no record."""
    report = TeardownReport()
    config = overlay_record.load() or default or OverlayConfig()
    bridges: list[str] = []
    if conf_path is not None and conf_path.exists():
        try:
            bridges = _bridges_of(json.loads(conf_path.read_text()))
        except (OSError, ValueError) as exc:
            report.kept.append(f"{conf_path}: cannot read it ({exc}), bridges unknown")
        conf_path.unlink()
        report.conf = str(conf_path)
    with Rtnl() as rt:
        done = overlay.teardown(rt, config)
        report.routes, report.devices = done.routes, done.devices
        present = links.dump(rt)
        for name in dict.fromkeys(bridges):
            bridge = next((link for link in present if link.name == name), None)
            if bridge is None or bridge.kind != "bridge":
                continue
            ports = [link.name for link in present if link.master == bridge.index]
            if ports:
                report.kept.append(f"bridge {name}: ports still attached ({', '.join(ports)})")
                continue
            links.delete(rt, bridge.index)
            report.bridges.append(name)
    report.cluster_networks = len(masq.cluster_networks())
    masq.set_cluster_networks([])
    report.masquerade_table = masq.delete_table_if_unused()
    report.policy_table = PolicyTable().delete()
    overlay_record.forget()
    return report
