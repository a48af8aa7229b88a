"""What the node holds, read from the attachment records, the IPAM store and the kernel.

Reconciliation runs when the agent starts: an ADD that never finished, or an attachment whose
host veth is gone (its netns died and took the pair with it), is DELeted with its own recorded
config, so its address, masquerade entry and record go; live attachments are kept. Host veths
of ours with no record file at all, in a network the records know, are deleted. A record that
cannot be read is quarantined: reported, and nothing of its attachment is touched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from loxicni.agent.metrics import PoolUsage
from loxicni.base import faults
from loxicni.base.logs import get_logger
from loxicni.cni.errors import CniError
from loxicni.ipam.config import parse_host_local
from loxicni.ipam.store import Store
from loxicni.net import links
from loxicni.net.rtnl import Rtnl
from loxicni.plugin import hostveth, locks, naming, records
from loxicni.plugin.locks import attachment_lock
from loxicni.plugin.release import FAILED, RELEASED, release

log = get_logger(__name__)


@dataclass
class ReconcileReport:
    kept: int = 0
    released: list[str] = field(default_factory=list)  # "network/containerID/ifname"
    failed: list[str] = field(default_factory=list)
    orphan_veths: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)  # record keys that cannot be read
    lock_files: list[str] = field(default_factory=list)  # of attachments without a record


def alive(ipr: Rtnl, record: records.Record) -> bool:
    """A finished ADD whose host veth is still there, labelled as this attachment's."""
    if record.state != records.READY or not record.host_veth:
        return False
    link = links.get(ipr, record.host_veth)
    return link is not None and link.alias == naming.alias(
        record.network, record.container_id, record.ifname
    )


def reconcile() -> ReconcileReport:
    report = ReconcileReport()
    records.remove_stale_temp_files()
    scan = records.scan()
    for bad in scan.unreadable:
        report.quarantined.append(bad.key)
        log.warning("reconcile: quarantined %s: nothing of it is touched", bad)
    with Rtnl() as ipr:
        for record in scan.records:
            name = f"{record.network}/{record.container_id}/{record.ifname}"
            if alive(ipr, record):
                report.kept += 1
                continue
            # Decided on this look; release re-checks it under the attachment's lock.
            outcome = release(record, still=lambda current: not alive(ipr, current))
            if outcome.status == RELEASED:
                report.released.append(name)
                log.info("reconcile: released %s (state %s)", name, record.state)
                faults.step("reconcile-release")
            elif outcome.status == FAILED:
                report.failed.append(name)
                log.warning("reconcile: DEL of %s failed: %s", name, outcome.error)
            else:
                report.kept += 1
        # Only networks this node's records know: another state dir's veths are not ours.
        known = {r.network for r in scan.records}
        for owner, found in hostveth.by_attachment(ipr, known).items():
            with attachment_lock(*owner) as lock:
                if records.exists(naming.attachment_key(*owner)):
                    continue  # a record, readable or not, means the veth may be live
                lock.remove_on_release = True
                for link in found:
                    links.delete(ipr, link.index)
                    report.orphan_veths.append(link.name)
                    log.info("reconcile: deleted orphan host veth %s", link.name)
    report.lock_files = locks.remove_unused(records.exists)  # of calls killed holding them
    return report


def addresses_per_network(scan: records.Scan) -> dict[str, int]:
    """Addresses held by this node's attachments, per network (from the records)."""
    counts: Counter[str] = Counter()
    for record in scan.held:
        counts[record.network] += len(record.ips)
    return dict(counts)


def pool_usage(scan: records.Scan) -> list[PoolUsage]:
    """In-use and free addresses of every host-local range of the networks seen here.

    Read without the store's lock: a figure for a dashboard may be a call behind, and a
    metrics scrape must never wait on (or stall) an ADD."""
    configs: dict[str, dict[str, Any]] = {}
    for record in scan.records:
        ipam = record.config.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            configs.setdefault(record.network, record.config)
    out: list[PoolUsage] = []
    for network, config in sorted(configs.items()):
        try:
            cfg = parse_host_local(config, {})
            reserved = list(Store(cfg.data_dir, cfg.network).reservations())
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
