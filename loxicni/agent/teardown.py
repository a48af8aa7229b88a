"""Removing what the agent made for the node, for an uninstall or a change of cross-node mode.

The pods' own network (veths, addresses, masquerade entries) goes with each pod's DEL. What
the agent made for the node stays when the agent stops, on purpose: a restart must not disturb
a single flow. That is the cross-node overlay (routes marked with its protocol, its vxlan
devices), the masquerade table's cluster networks and the pods' bridge. ``teardown`` removes
all of it, in the node's netns, with the agent stopped (``loxi-cni uninstall``, which removes
the CNI config first):

* the overlay as the agent recorded it in its state dir (``loxicni.net.overlay_record``), or
  by the default settings without a record: only routes carrying its protocol number, only
  vxlan links of its device names;
* the cluster networks of the masquerade table, then the table if no set holds anything;
* each bridge the CNI config named, unless a port is still attached (reported);
* the network policy table (it outlives the agent so a restart never opens an isolated pod).

An agent started with other overlay settings than the recorded ones, or with no cross-node
mode, removes the recorded overlay itself (``remove_leftovers``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from loxicni.base.logs import get_logger
from loxicni.net import links, masq, overlay, overlay_record
from loxicni.net.overlay import OverlayConfig
from loxicni.net.policy_table import PolicyTable
from loxicni.net.rtnl import Rtnl

log = get_logger(__name__)


@dataclass
class TeardownReport:
    routes: int = 0
    devices: list[str] = field(default_factory=list)
    cluster_networks: int = 0
    masquerade_table: bool = False
    policy_table: bool = False
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


def teardown(bridges: Iterable[str], default: OverlayConfig | None, report: TeardownReport) -> None:
    """Remove the node's overlay, cluster networks and idle ``bridges`` (module docstring) into
    ``report``. ``default``: the overlay settings to use when the agent left no record."""
    config = overlay_record.load() or default or OverlayConfig()
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
