"""host-local IPAM configuration, parsed and validated the way the reference plugin does it.

The reference is the host-local IPAM of containernetworking/plugins. A config it accepts must be
accepted here with the same defaults and the same range-set order, because the range-set index
names the ``last_reserved_ip.<index>`` file both plugins share. Every bad value is reported as
``CniError(INVALID_CONFIG)`` naming the offending field.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loxicni.cni import version as cni_version
from loxicni.cni.addresses import canonical, parse_ip
from loxicni.cni.addresses import parse_pool_cidr as parse_cidr
from loxicni.cni.errors import CniError, Code
from loxicni.cni.fields import Fields
from loxicni.cni.names import valid_network_name
from loxicni.cni.types import IPAddress, IPNetwork, Route

DEFAULT_DATA_DIR = Path("/var/lib/cni/networks")


@dataclass(frozen=True)
class Range:
    """One pool: ``range_start``..``range_end`` (inclusive) inside ``subnet``."""

    subnet: IPNetwork
    range_start: IPAddress
    range_end: IPAddress
    gateway: IPAddress | None

    def contains(self, ip: IPAddress) -> bool:
        """True if ``ip`` is allocatable from this range (gateway included, as in the reference)."""
        # Compared as integers once the families agree (mixed families do not order).
        return ip.version == self.subnet.version and (
            int(self.range_start) <= int(ip) <= int(self.range_end)
        )

    def overlaps(self, other: Range) -> bool:
        return self.subnet.version == other.subnet.version and not (
            int(self.range_end) < int(other.range_start)
            or int(other.range_end) < int(self.range_start)
        )

    def __str__(self) -> str:
        return f"{self.range_start}-{self.range_end}"


@dataclass(frozen=True)
class RangeSet:
    """Ranges of one address family; the allocator hands out one address per range set."""

    ranges: tuple[Range, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].subnet.version

    def range_for(self, ip: IPAddress) -> Range | None:
        return next((r for r in self.ranges if r.contains(ip)), None)

    def contains(self, ip: IPAddress) -> bool:
        return self.range_for(ip) is not None

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


@dataclass(frozen=True)
class HostLocalConfig:
    network: str
    data_dir: Path
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Route, ...]
    resolv_conf: str | None
    requested: tuple[IPAddress, ...]

    @property
    def network_dir(self) -> Path:
        return self.data_dir / self.network


# Go's encoding/json matches keys case-insensitively, the last match winning.
_F = Fields(Code.INVALID_CONFIG, fold_case=True)
_get = _F.get


def _bad(field: str, msg: str) -> CniError:
    return CniError(Code.INVALID_CONFIG, f"{field}: {msg}")


def _mapping(value: Any, field: str) -> Mapping[str, Any] | None:
    return None if value is None else _F.as_object(value, field)


def _list(value: Any, field: str) -> Sequence[Any]:
    return _F.as_list(value, field)


def _string(value: Any, field: str) -> str | None:
    """An optional string; ``""`` counts as unset, as Go's zero value does."""
    return _F.as_str(value, field) or None


def _quote(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _ip_field(value: Any, field: str) -> IPAddress | None:
    text = _string(value, field)
    if text is None:
        return None
    try:
        return parse_ip(text)
    except ValueError:
        raise _bad(field, f"{_quote(text)} is not an IP address") from None


def _requested_ip(text: Any, field: str) -> IPAddress:
    """A requested IP: ``addr`` or ``addr/prefix`` (pkg/ip.ParseIP); the prefix is ignored."""
    if not isinstance(text, str) or not text:
        raise _bad(field, f"{_quote(text)} is not an IP address")
    try:
        return canonical(parse_cidr(text)[0]) if "/" in text else parse_ip(text)
    except ValueError:
        raise _bad(field, f"{_quote(text)} is not an IP address") from None


def _next(ip: IPAddress) -> IPAddress:
    return ip + 1


def _parse_range(obj: Any, field: str) -> Range:
    """Validate and default one range in the reference's order (Range.Canonicalize)."""
    m = _mapping(obj, field)
    if m is None:
        raise _bad(field, "expected a range object")
    subnet_text = _get(m, "subnet")
    if not isinstance(subnet_text, str):
        raise _bad(f"{field}.subnet", f"{_quote(subnet_text)} is not a CIDR")
    try:
        addr, prefix = parse_cidr(subnet_text)
    except ValueError:
        raise _bad(f"{field}.subnet", f"{_quote(subnet_text)} is not a CIDR") from None
    if prefix > addr.max_prefixlen - 2:
        raise _bad(f"{field}.subnet", f"network {addr}/{prefix} too small to allocate from")
    subnet = ipaddress.ip_network((addr, prefix), strict=False)
    if subnet.network_address != addr:
        raise _bad(
            f"{field}.subnet",
            f"network has host bits set; for a /{prefix} the network address is "
            f"{subnet.network_address}",
        )

    gateway = _ip_field(_get(m, "gateway"), f"{field}.gateway")
    if gateway is None:
        gateway = _next(subnet.network_address)
    elif gateway.version != subnet.version:
        # The reference accepts any gateway; one of the other family can only yield nonsense.
        raise _bad(f"{field}.gateway", f"{gateway} is not an IPv{subnet.version} address")

    start = _ip_field(_get(m, "rangeStart"), f"{field}.rangeStart")
    end = _ip_field(_get(m, "rangeEnd"), f"{field}.rangeEnd")

    # The reference's Range.Contains: same family, in the subnet, within whatever bounds are set.
    if start is not None:
        _check_bound(start, subnet, None, end, f"{field}.rangeStart")
    else:
        start = _next(subnet.network_address)
    if end is not None:
        _check_bound(end, subnet, start, None, f"{field}.rangeEnd")
    else:
        # Last address of the subnet, less the broadcast address for IPv4.
        end = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
        if int(start) > int(end):
            # The reference checks rangeStart before defaulting rangeEnd, accepts this, and
            # then allocates the broadcast address and walks out of the subnet.
            raise _bad(f"{field}.rangeStart", f"{start} is after the default rangeEnd {end}")
    return Range(subnet=subnet, range_start=start, range_end=end, gateway=gateway)


def _check_bound(
    ip: IPAddress, subnet: IPNetwork, lo: IPAddress | None, hi: IPAddress | None, field: str
) -> None:
    if ip.version != subnet.version or ip not in subnet:
        raise _bad(field, f"{ip} not in network {subnet}")
    if lo is not None and int(ip) < int(lo):
        raise _bad(field, f"{ip} is before rangeStart {lo}")
    if hi is not None and int(ip) > int(hi):
        raise _bad(field, f"{ip} is after rangeEnd {hi}")


def _parse_range_set(obj: Any, field: str) -> RangeSet:
    items = _list(obj, field)
    if not items:
        raise _bad(field, "empty range set")
    ranges = tuple(_parse_range(item, f"{field}[{i}]") for i, item in enumerate(items))
    for i, r in enumerate(ranges[1:], 1):
        if r.subnet.version != ranges[0].subnet.version:
            raise _bad(f"{field}[{i}]", "mixed address families in one range set")
    for i, a in enumerate(ranges):
        for j in range(i + 1, len(ranges)):
            if a.overlaps(ranges[j]):
                raise _bad(f"{field}[{j}]", f"range {ranges[j]} overlaps {field}[{i}] ({a})")
    return RangeSet(ranges)


def _parse_route(obj: Any, field: str) -> Route:
    m = _mapping(obj, field)
    if m is None:
        raise _bad(field, "expected a route object")
    dst_text = _get(m, "dst")
    try:
        if not isinstance(dst_text, str):
            raise ValueError(dst_text)
        addr, prefix = parse_cidr(dst_text)
    except ValueError:
        raise _bad(f"{field}.dst", f"{_quote(dst_text)} is not a CIDR") from None
    # Host bits are masked off (the reference passes them through; the kernel refuses them).
    dst = ipaddress.ip_network((addr, prefix), strict=False)
    gw = _ip_field(_get(m, "gw"), f"{field}.gw")
    if gw is not None and gw.version != dst.version:
        raise _bad(f"{field}.gw", f"{gw} is not an IPv{dst.version} address")
    ints: dict[str, int | None] = {}
    for key in ("mtu", "advmss", "priority", "table", "scope"):
        value = _get(m, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _bad(f"{field}.{key}", f"expected an integer, got {_quote(value)}")
        if value is not None and value < 0:
            raise _bad(f"{field}.{key}", f"must not be negative, got {value}")
        ints[key] = value
    return Route(dst=dst, gw=gw, **ints)


def _requested(netconf: Mapping[str, Any], cni_args: Mapping[str, str]) -> tuple[IPAddress, ...]:
    """Requested IPs in the reference's order: CNI_ARGS ``IP``, ``args.cni.ips``,
    ``runtimeConfig.ips``; duplicates collapse (the reference keys them by string)."""
    found: list[IPAddress] = []
    env = cni_args.get("IP", "")
    if env:
        found += [_requested_ip(part, "CNI_ARGS IP") for part in env.split(",")]
    args = _mapping(_get(netconf, "args"), "args")
    cni = _mapping(_get(args, "cni"), "args.cni") if args is not None else None
    if cni is not None:
        for i, v in enumerate(_list(_get(cni, "ips"), "args.cni.ips")):
            found.append(_requested_ip(v, f"args.cni.ips[{i}]"))
    runtime = _mapping(_get(netconf, "runtimeConfig"), "runtimeConfig")
    if runtime is not None:
        for i, v in enumerate(_list(_get(runtime, "ips"), "runtimeConfig.ips")):
            found.append(_requested_ip(v, f"runtimeConfig.ips[{i}]"))
    return tuple(dict.fromkeys(found))


def _range_sets(
    netconf: Mapping[str, Any], ipam: Mapping[str, Any]
) -> Iterator[tuple[RangeSet, str]]:
    """Range sets in the reference's order: runtimeConfig.ipRanges, the legacy top-level range,
    then ipam.ranges. The order fixes each set's index, hence its last_reserved_ip file."""
    runtime = _mapping(_get(netconf, "runtimeConfig"), "runtimeConfig")
    if runtime is not None:
        for i, rs in enumerate(_list(_get(runtime, "ipRanges"), "runtimeConfig.ipRanges")):
            field = f"runtimeConfig.ipRanges[{i}]"
            yield _parse_range_set(rs, field), field
    if _get(ipam, "subnet") is not None:
        # Legacy single range at the top of ipam; without a subnet the reference ignores it.
        yield RangeSet((_parse_range(ipam, "ipam"),)), "ipam"
    for i, rs in enumerate(_list(_get(ipam, "ranges"), "ipam.ranges")):
        yield _parse_range_set(rs, f"ipam.ranges[{i}]"), f"ipam.ranges[{i}]"


def parse_host_local(netconf: Mapping[str, Any], cni_args: Mapping[str, str]) -> HostLocalConfig:
    """Parse the whole network config (the plugin's stdin) plus the parsed CNI_ARGS."""
    name = _get(netconf, "name")
    if not isinstance(name, str) or not valid_network_name(name):
        raise _bad("name", f"{_quote(name)} is not a valid network name")
    ipam = _mapping(_get(netconf, "ipam"), "ipam")
    if ipam is None:
        raise _bad("ipam", "missing")
    ipam_type = _get(ipam, "type")
    if ipam_type not in (None, "host-local"):
        raise _bad("ipam.type", f"{_quote(ipam_type)} is not host-local")

    data_dir = _string(_get(ipam, "dataDir"), "ipam.dataDir")
    resolv_conf = _string(_get(ipam, "resolvConf"), "ipam.resolvConf")
    routes = tuple(
        _parse_route(r, f"ipam.routes[{i}]")
        for i, r in enumerate(_list(_get(ipam, "routes"), "ipam.routes"))
    )
    requested = _requested(netconf, cni_args)

    sources = list(_range_sets(netconf, ipam))
    if not sources:
        raise _bad("ipam.ranges", "no IP ranges specified")
    range_sets = tuple(rs for rs, _ in sources)

    if not cni_version.is_at_least(_get(netconf, "cniVersion"), "0.3.0"):
        for family in (4, 6):
            if sum(rs.version == family for rs in range_sets) > 1:
                raise _bad(
                    "cniVersion",
                    f"{_quote(_get(netconf, 'cniVersion'))} allows one IPv{family} range set only",
                )
    for i, a in enumerate(range_sets):
        for j in range(i + 1, len(range_sets)):
            if a.overlaps(range_sets[j]):
                raise _bad(sources[j][1], f"range set overlaps {sources[i][1]}")

    return HostLocalConfig(
        network=name,
        data_dir=Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR,
        range_sets=range_sets,
        routes=routes,
        resolv_conf=resolv_conf,
        requested=requested,
    )
