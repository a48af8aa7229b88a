"""What the node holds, read from the attachment records, the IPAM store and the kernel.

Reconciliation runs when the agent starts: an ADD that never finished, or an attachment whose
host veth is gone (its netns died and took the pair with it), is DELeted with its own recorded
config, so its address, masquerade entry and record go; live attachments are kept. Host veths
of ours with no record, in a network the records know, are deleted.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from loxicni.agent.metrics import PoolUsage
from loxicni.cni import skel
from loxicni.cni.errors import CniError
from loxicni.ipam.config import parse_host_local
from loxicni.ipam.store import Store
from loxicni.net import links
from loxicni.net.reaper import LinkReaper
from loxicni.net.rtnl import Rtnl
from loxicni.plugin import naming, records
from loxicni.plugin.bridge import BridgePlugin
from loxicni.plugin.config import KNOWN_ARGS
from loxicni.plugin.locks import attachment_lock

log = logging.getLogger("loxi-cni.agent")


@dataclass
class ReconcileReport:
    kept: int = 0
    released: list[str] = field(default_factory=list)  # "network/containerID/ifname"
    failed: list[str] = field(default_factory=list)
    orphan_veths: list[str] = field(default_factory=list)


def _alive(ipr: Rtnl, record: records.Record) -> bool:
    if record.state != records.READY or not record.host_veth:
        return False
    link = links.get(ipr, record.host_veth)
    return link is not None and link.alias == naming.alias(
        record.network, record.container_id, record.ifname
    )


def release(record: records.Record, reaper: LinkReaper | None = None) -> tuple[int, bytes]:
    """DEL an attachment through the normal plugin path, with its recorded config.

    The recorded netns is passed when it still exists: an ADD killed between creating the
    veth pair and labelling its host end can only be found from the pod's side.
    """
    netns = record.netns if record.netns and os.path.exists(record.netns) else ""
    env = {
        "CNI_COMMAND": "DEL",
        "CNI_CONTAINERID": record.container_id,
        "CNI_IFNAME": record.ifname,
        "CNI_NETNS": netns,
        "CNI_ARGS": record.cni_args,
        "CNI_PATH": ":".join(record.cni_path),
    }
    plugin = BridgePlugin(reaper=reaper)
    return skel.run(plugin, env, json.dumps(record.config).encode(), KNOWN_ARGS)


def reconcile() -> ReconcileReport:
    report = ReconcileReport()
    records.remove_stale_temp_files()
    with Rtnl() as ipr:
        for record in list(records.all_records()):
            name = f"{record.network}/{record.container_id}/{record.ifname}"
            # The lock waits out an ADD or DEL in flight for this attachment; then decide.
            with attachment_lock(record.network, record.container_id, record.ifname) as lock:
                current = records.load(record.key)
                if current is None:  # DELeted meanwhile
                    lock.remove_on_release = True
                    continue
                if _alive(ipr, current):
                    report.kept += 1
                    continue
            code, out = release(current)
            if code == 0:
                report.released.append(name)
                log.info("reconcile: released %s (state %s)", name, current.state)
            else:
                report.failed.append(name)
                log.warning("reconcile: DEL of %s failed: %s", name, out.decode(errors="replace"))
        # Only networks this node's records know: another state dir's veths are not ours.
        known = {r.network for r in records.all_records()} | {
            r.split("/")[0] for r in report.released
        }
        for link in links.dump(ipr):
            owner = naming.parse_alias(link.alias)
            if owner is None or owner[0] not in known:
                continue
            with attachment_lock(*owner) as lock:
                if records.load(records.record_key(*owner)) is None:
                    lock.remove_on_release = True
                    links.delete(ipr, link.index)
                    report.orphan_veths.append(link.name)
                    log.info("reconcile: deleted orphan host veth %s", link.name)
    return report


def addresses_per_network() -> dict[str, int]:
    """Addresses held by this node's attachments, per network (from the records)."""
    counts: Counter[str] = Counter()
    for record in records.all_records():
        counts[record.network] += len(record.ips)
    return dict(counts)


def pool_usage() -> list[PoolUsage]:
    """In-use and free addresses of every host-local range of the networks seen here."""
    configs: dict[str, dict[str, Any]] = {}
    for record in records.all_records():
        ipam = record.config.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            configs.setdefault(record.network, record.config)
    out: list[PoolUsage] = []
    for network, config in sorted(configs.items()):
        try:
            cfg = parse_host_local(config, {})
            store = Store(cfg.data_dir, cfg.network)
            with store.locked():
                reserved = list(store.reservations())
        except CniError as exc:
            log.warning("metrics: cannot read the pool of %s: %s", network, exc.msg)
            continue
        for range_set in cfg.range_sets:
            for rng in range_set.ranges:
                size = int(rng.range_end) - int(rng.range_start) + 1
                if rng.gateway is not None and rng.contains(rng.gateway):
                    size -= 1
                used = sum(1 for ip in reserved if rng.contains(ip))
                out.append(PoolUsage(network, str(rng), used, max(size - used, 0)))
    return out
