"""GC: release every attachment of the network that the runtime no longer lists as valid.

The runtime's list is a snapshot taken before the call; an ADD that finishes while GC runs is
valid even though the list cannot say so. So GC notes when it starts, on the clock the kernel
stamps file times with, and keeps anything written after that: a record saved later (checked
under the attachment's lock), a reservation file created later (checked under the store's
lock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loxicni.base import faults, files
from loxicni.base.logs import get_logger
from loxicni.cni.errors import CniError, Code
from loxicni.cni.request import Request
from loxicni.net import links, masq
from loxicni.net.rtnl import Rtnl
from loxicni.plugin import hostveth, locks, naming, records
from loxicni.plugin.config import BridgeConfig
from loxicni.plugin.ipam import Ipam
from loxicni.plugin.locks import attachment_lock

log = get_logger(__name__)


def valid_attachments(conf: dict[str, Any]) -> set[tuple[str, str]]:
    """``cni.dev/valid-attachments`` (or the older ``cni.dev/attachments``) of a GC call."""
    raw = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise CniError(Code.INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    out: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("containerID"), str)
            and isinstance(item.get("ifname"), str)
        ):
            raise CniError(
                Code.INVALID_CONFIG,
                f"cni.dev/valid-attachments[{i}] needs containerID and ifname strings",
            )
        out.add((item["containerID"], item["ifname"]))
    return out


def _written_since(key: str, started_ns: int) -> bool:
    try:
        return records.mtime_ns(key) >= started_ns
    except FileNotFoundError:
        return False


def collect(
    req: Request, cfg: BridgeConfig, still_wanted: Callable[[], None] | None = None
) -> None:
    """Tear down each stale attachment under its own lock (masquerade, host veths, record,
    lock file); then the IPAM releases every reservation that no valid attachment holds,
    including ones the reference plugin made, except those GC keeps: added while it ran, or
    of an attachment whose record cannot be read (quarantined: nothing of it is touched).
    ``still_wanted`` raises if the caller has given up: a GC run late would hold a valid
    list older than the attachments added since."""
    started_ns = files.file_time_mark_ns()  # on the clock the kernel stamps files with
    if still_wanted is not None:
        still_wanted()  # after the mark: what the caller adds next is written later
    valid = valid_attachments(req.config)
    scan = records.scan()
    quarantined = {bad.key for bad in scan.unreadable}
    kept: set[tuple[str, str]] = set()
    stale = masq.masqueraded_attachments(cfg.network)
    stale |= {(r.container_id, r.ifname) for r in scan.records if r.network == cfg.network}
    with Rtnl() as host:
        veths = {
            (cid, ifname): found
            for (_, cid, ifname), found in hostveth.by_attachment(host, {cfg.network}).items()
        }
        stale |= set(veths)
        for container_id, ifname in sorted(stale - valid):
            key = naming.attachment_key(cfg.network, container_id, ifname)
            with attachment_lock(cfg.network, container_id, ifname) as lock:
                if _written_since(key, started_ns):
                    log.info("GC: keeping %s/%s, added while GC ran", container_id, ifname)
                    kept.add((container_id, ifname))
                    continue
                try:
                    records.load(key)
                except records.Unreadable as exc:
                    log.warning("GC: leaving %s/%s alone: %s", container_id, ifname, exc)
                    kept.add((container_id, ifname))
                    continue
                masq.remove_masquerade(cfg.network, container_id, ifname)
                for link in veths.get((container_id, ifname), []):
                    links.delete(host, link.index)
                records.remove(cfg.network, container_id, ifname)
                lock.remove_on_release = True
                faults.step("gc-attachment")

    def held(container_id: str, ifname: str) -> bool:
        key = naming.attachment_key(cfg.network, container_id, ifname)
        return (container_id, ifname) in kept or key in quarantined

    faults.step("gc-ipam")
    Ipam(req, cfg.ipam_type).gc(valid, started_ns, held)
    locks.remove_unused(records.exists)  # those of calls killed before they let go
