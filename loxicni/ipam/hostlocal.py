"""host-local IPAM operations, served in-process on the reference plugin's store.

Allocation follows the reference host-local plugin: one address per range set; a requested
address if one falls in the set, otherwise round-robin from the set's ``last_reserved_ip`` + 1
across its ranges, skipping each range's gateway, until the walk comes back to where it started.
Each operation holds the store lock only around its read-modify-write, so the reference binary
can work on the same data dir at the same time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Collection, Iterator
from contextlib import suppress

from loxicni.cni.errors import CniError, Code
from loxicni.cni.types import DNS, IPAddress, IPConfig, Result
from loxicni.ipam.config import HostLocalConfig, Range, RangeSet
from loxicni.ipam.store import Store


def parse_resolv_conf(path: str) -> DNS:
    """DNS settings from a resolv.conf, read like the reference's: ``nameserver``
    lines append one server, ``search`` and ``options`` append all their words, the last
    ``domain`` wins; comments (``#``, ``;``) and lines with fewer than two words are skipped."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        msg = f"ipam.resolvConf: cannot read {path}: {e.strerror}"
        raise CniError(Code.INVALID_CONFIG, msg) from e
    except OSError as e:
        raise CniError(Code.IO_FAILURE, f"ipam.resolvConf: cannot read {path}: {e.strerror}") from e
    dns = DNS()
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        words = line.split()
        if len(words) < 2:
            continue
        key, args = words[0], words[1:]
        if key == "nameserver":
            dns.nameservers.append(args[0])
        elif key == "domain":
            dns.domain = args[0]
        elif key == "search":
            dns.search.extend(args)
        elif key == "options":
            dns.options.extend(args)
    return dns


def candidates(range_set: RangeSet, last: IPAddress | None) -> Iterator[tuple[Range, IPAddress]]:
    """The reference's RangeIter: addresses to try, in order, for one allocation.

    Starts after ``last`` when the set contains it (round-robin, so a crash-looping container
    does not get the same address back at once), else at the first range's start. Walks each
    range to its end, then the next range (wrapping), skips gateways, and stops on returning to
    the first address it produced.
    """
    ranges = range_set.ranges
    idx = 0
    cur: IPAddress | None = None
    first: IPAddress | None = None
    if last is not None:
        for i, r in enumerate(ranges):
            if r.contains(last):
                idx, cur = i, last
                break
    while True:
        r = ranges[idx]
        if cur is None:
            cur = first = r.range_start
        else:
            if cur == r.range_end:
                idx = (idx + 1) % len(ranges)
                r = ranges[idx]
                cur = r.range_start
            else:
                cur = cur + 1
            if first is None:
                first = cur
            elif cur == first:
                return
        if cur != r.gateway:
            yield r, cur


def _ip_config(r: Range, ip: IPAddress) -> IPConfig:
    return IPConfig(address=ipaddress.ip_interface((ip, r.subnet.prefixlen)), gateway=r.gateway)


def _match_requested(cfg: HostLocalConfig) -> tuple[list[IPAddress | None], list[IPAddress]]:
    """Give each range set the first requested address it contains (the reference's matching);
    returns the per-set choice and the requests no set took."""
    plan: list[IPAddress | None] = [None] * len(cfg.range_sets)
    left: list[IPAddress] = []
    for ip in cfg.requested:
        idx = next(
            (i for i, rs in enumerate(cfg.range_sets) if plan[i] is None and rs.contains(ip)), None
        )
        if idx is None:
            left.append(ip)
        else:
            plan[idx] = ip
    return plan, left


def _allocate_one(
    store: Store,
    cfg: HostLocalConfig,
    idx: int,
    want: IPAddress | None,
    held: list[IPAddress],
    attachment: tuple[str, str],
) -> IPConfig:
    """One range set's address (the reference allocator's Get)."""
    range_set = cfg.range_sets[idx]
    cid, ifname = attachment
    for ip in held:
        if range_set.contains(ip):
            raise CniError(
                Code.ADDRESS_UNAVAILABLE,
                f"{ip} has been allocated to {cid}/{ifname}, duplicate allocation is not allowed",
            )
    if want is not None:
        r = range_set.range_for(want)
        assert r is not None  # matched by _match_requested
        if want == r.gateway:
            raise CniError(Code.INVALID_CONFIG, f"requested IP {want} is its subnet's gateway")
        if not store.reserve(want, cid, ifname, idx):
            raise CniError(
                Code.ADDRESS_UNAVAILABLE,
                f"requested IP address {want} is not available in range set {range_set}",
            )
        return _ip_config(r, want)
    for r, ip in candidates(range_set, store.last_reserved(idx)):
        if store.reserve(ip, cid, ifname, idx):
            return _ip_config(r, ip)
    raise CniError(
        Code.ADDRESS_UNAVAILABLE, f"no IP addresses available in range set {idx}: {range_set}"
    )


def allocate(cfg: HostLocalConfig, container_id: str, ifname: str) -> Result:
    """ADD: one address per range set, all or nothing.

    Steps and failure points follow the reference, range set by range set, so that even a failed
    ADD leaves last_reserved_ip exactly as the reference would (it advances, then the
    addresses are given back); later allocations then agree with the reference's.
    """
    dns = parse_resolv_conf(cfg.resolv_conf) if cfg.resolv_conf else DNS()
    plan, unmatched = _match_requested(cfg)
    store = Store(cfg.data_dir, cfg.network)
    ips: list[IPConfig] = []
    with store.locked():
        held = store.ips_of(container_id, ifname)
        try:
            for idx, want in enumerate(plan):
                ips.append(_allocate_one(store, cfg, idx, want, held, (container_id, ifname)))
            if unmatched:
                raise CniError(
                    Code.INVALID_CONFIG,
                    "requested IPs outside the configured ranges, or more than one per range "
                    "set: " + " ".join(map(str, unmatched)),
                )
        except BaseException:
            for done in ips:  # only what this call took (the reference frees the attachment)
                with suppress(CniError):  # keep the original error
                    store.release(done.address.ip)
            raise
    routes = [dataclasses.replace(r) for r in cfg.routes]
    return Result(ips=ips, routes=routes, dns=dns)


def release(cfg: HostLocalConfig, container_id: str, ifname: str) -> None:
    """DEL: free whatever the attachment holds. Idempotent."""
    store = Store(cfg.data_dir, cfg.network)
    if not store.exists():
        return
    with store.locked():
        store.release_attachment(container_id, ifname)


def check(cfg: HostLocalConfig, container_id: str, ifname: str) -> list[IPAddress]:
    """CHECK: the attachment's addresses; CniError if it holds none (the reference's FindByID)."""
    store = Store(cfg.data_dir, cfg.network)
    ips: list[IPAddress] = []
    if store.exists():
        with store.locked():
            ips = store.ips_of(container_id, ifname)
    if not ips:
        raise CniError(
            Code.CHECK_FAILED,
            f"host-local: no address allocated to {container_id}/{ifname} in {cfg.network}",
        )
    return ips


def gc(
    cfg: HostLocalConfig,
    valid: Collection[tuple[str, str]],
    started_ns: int | None = None,
    keep: Callable[[str, str], bool] | None = None,
) -> list[IPAddress]:
    """GC: free every reservation not held by a valid attachment; returns what was freed.

    Old-format files (container ID only) stay while any attachment of that container is valid.
    A reservation made at or after ``started_ns`` (``files.file_time_mark_ns``) stays too: the
    valid list is older than it. So does one whose holder ``keep(container_id, ifname)``.
    """
    store = Store(cfg.data_dir, cfg.network)
    if not store.exists():
        return []
    listed = {(cid.strip(), ifname) for cid, ifname in valid}
    listed_containers = {cid for cid, _ in listed}
    released: list[IPAddress] = []
    holders = set(listed)
    with store.locked():
        for ip, (cid, ifname) in store.reservations().items():
            held = (
                ((cid, ifname) in listed if ifname else cid in listed_containers)
                or (keep is not None and keep(cid, ifname))
                or (started_ns is not None and store.reserved_at_ns(ip) >= started_ns)
            )
            if held:
                holders.add((cid, ifname))
            elif store.release(ip):
                released.append(ip)
        store.prune_index(holders)
    return released


def status(cfg: HostLocalConfig) -> None:
    """STATUS: CniError(NOT_AVAILABLE) unless the data dir can be created and written."""
    store = Store(cfg.data_dir, cfg.network)
    try:
        with store.locked():
            store.probe()
    except CniError as e:
        raise CniError(Code.NOT_AVAILABLE, f"host-local data dir unusable: {e.msg}") from e
