"""Convert the version-neutral ``Result`` to and from the JSON of each CNI version.

Three wire shapes exist: 0.1.0/0.2.0 (``ip4``/``ip6`` objects), 0.3.0-0.4.0 (``ips`` lists
whose entries carry ``"version"``) and 1.x (``ips`` without ``"version"``). 1.1.0 adds
interface ``mtu``/``socketPath``/``pciID`` and route ``mtu``/``advmss``/``priority``/
``table``/``scope``; older versions do not carry them.

Encoding follows the reference Go library (libcni >= 1.2): fields are dropped when empty,
as Go's ``omitempty`` does, and so are the integers whose zero means "unset" (MTUs,
``advmss``, ``priority``); ``table``/``scope``/``interface`` are kept when 0. An empty
``dns`` is omitted from 1.x results and written as ``{}`` in older ones.

Decoding is lenient where Go is (unknown keys ignored, ``null`` treated as absent) and
strict about values: a bad CIDR or a wrong type is ``DECODE_FAILURE``, a value that is
well-formed but contradicts the rest of the result (interface index out of range, an
IPv6 address under ``ip4``) is ``INVALID_CONFIG``. Every message names the field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, NoReturn

from loxicni.cni.addresses import parse_cidr
from loxicni.cni.errors import CniError, Code
from loxicni.cni.fields import Fields
from loxicni.cni.types import (
    DNS,
    Interface,
    IPAddress,
    IPConfig,
    IPInterface,
    IPNetwork,
    Result,
    Route,
)
from loxicni.cni.version import SUPPORTED_VERSIONS, at_least

JsonObj = dict[str, Any]

_LEGACY = frozenset({"0.1.0", "0.2.0"})  # ip4/ip6 shape
_VERSIONED_IPS = frozenset({"0.3.0", "0.3.1", "0.4.0"})  # ips[].version present
_F = Fields(Code.DECODE_FAILURE, "invalid result: ")


# --------------------------------------------------------------------------- encoding


def result_to_json(result: Result, version: str) -> JsonObj:
    """Render ``result`` in exactly the shape of CNI ``version``."""
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"cannot encode a result as CNI version {version!r}; "
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if version in _LEGACY:
        return _legacy_to_json(result, version)
    return _modern_to_json(result, version)


def _modern_to_json(result: Result, version: str) -> JsonObj:
    extended = at_least(version, "1.1.0")
    out: JsonObj = {"cniVersion": version}
    if result.interfaces:
        out["interfaces"] = [_interface_to_json(i, extended) for i in result.interfaces]
    if result.ips:
        with_version = version in _VERSIONED_IPS
        out["ips"] = [_ipconfig_to_json(ip, with_version) for ip in result.ips]
    if result.routes:
        out["routes"] = [_route_to_json(r, extended) for r in result.routes]
    dns = _dns_to_json(result.dns)
    # libcni >= 1.2 drops an empty dns from 1.x results; types040 always writes it.
    if dns or not at_least(version, "1.0.0"):
        out["dns"] = dns
    return out


def _interface_to_json(iface: Interface, extended: bool) -> JsonObj:
    out: JsonObj = {"name": iface.name}
    if iface.mac:
        out["mac"] = iface.mac
    if extended and iface.mtu:
        out["mtu"] = iface.mtu
    if iface.sandbox:
        out["sandbox"] = iface.sandbox
    if extended and iface.socket_path:
        out["socketPath"] = iface.socket_path
    if extended and iface.pci_id:
        out["pciID"] = iface.pci_id
    return out


def _ipconfig_to_json(ip: IPConfig, with_version: bool) -> JsonObj:
    out: JsonObj = {}
    if with_version:
        out["version"] = str(ip.address.version)
    if ip.interface is not None:
        out["interface"] = ip.interface
    out["address"] = str(ip.address)
    if ip.gateway is not None:
        out["gateway"] = str(ip.gateway)
    return out


def _route_to_json(route: Route, extended: bool) -> JsonObj:
    out: JsonObj = {"dst": str(route.dst)}
    if route.gw is not None:
        out["gw"] = str(route.gw)
    if extended:
        if route.mtu:
            out["mtu"] = route.mtu
        if route.advmss:
            out["advmss"] = route.advmss
        if route.priority:
            out["priority"] = route.priority
        if route.table is not None:
            out["table"] = route.table
        if route.scope is not None:
            out["scope"] = route.scope
    return out


def _dns_to_json(dns: DNS) -> JsonObj:
    out: JsonObj = {}
    if dns.nameservers:
        out["nameservers"] = list(dns.nameservers)
    if dns.domain:
        out["domain"] = dns.domain
    if dns.search:
        out["search"] = list(dns.search)
    if dns.options:
        out["options"] = list(dns.options)
    return out


def _legacy_to_json(result: Result, version: str) -> JsonObj:
    """0.1.0/0.2.0 hold one address per family: keep the first of each, as libcni does."""
    sections: dict[int, JsonObj] = {}
    for ip in result.ips:
        family = ip.address.version
        if family not in sections:
            section: JsonObj = {"ip": str(ip.address)}
            if ip.gateway is not None:
                section["gateway"] = str(ip.gateway)
            sections[family] = section
    if not sections:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"cannot express a result without IP addresses in CNI version {version}",
        )
    for route in result.routes:
        target = sections.get(route.dst.version)
        if target is not None:  # a route of a family without an address has no home
            entry: JsonObj = {"dst": str(route.dst)}
            if route.gw is not None:
                entry["gw"] = str(route.gw)
            target.setdefault("routes", []).append(entry)
    out: JsonObj = {"cniVersion": version}
    if 4 in sections:
        out["ip4"] = sections[4]
    if 6 in sections:
        out["ip6"] = sections[6]
    out["dns"] = _dns_to_json(result.dns)
    return out


# --------------------------------------------------------------------------- decoding


def result_from_json(obj: Any, default_version: str | None = None) -> Result:
    """Parse a result of any supported version (a ``prevResult``, a delegated plugin's stdout).

    ``default_version`` stands in for a missing or empty ``cniVersion``, the way libcni
    reads an IPAM plugin's unversioned output as the config's version; without it a
    result must state its version.
    """
    obj = _F.as_object(obj, "result", required=True)
    version = _F.as_str(obj.get("cniVersion"), "cniVersion", default=default_version or "")
    if not version:
        _F.fail("cniVersion", "missing")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"result has unsupported cniVersion {version!r}; "
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if version in _LEGACY:
        result = _legacy_from_json(obj)
    else:
        result = _modern_from_json(obj, check_ip_version=version in _VERSIONED_IPS)
    result.cni_version = version
    return result


def _objects(obj: Mapping[str, Any], key: str, path: str) -> list[tuple[Mapping[str, Any], str]]:
    """The objects of an optional array, each with its path."""
    return [
        (_F.as_object(item, f"{path}[{n}]", required=True), f"{path}[{n}]")
        for n, item in enumerate(_F.as_list(obj.get(key), path))
    ]


def _modern_from_json(obj: Mapping[str, Any], check_ip_version: bool) -> Result:
    interfaces = [_interface_from_json(o, p) for o, p in _objects(obj, "interfaces", "interfaces")]
    ips = [
        _ipconfig_from_json(o, p, len(interfaces), check_ip_version)
        for o, p in _objects(obj, "ips", "ips")
    ]
    routes = [_route_from_json(o, p) for o, p in _objects(obj, "routes", "routes")]
    return Result(interfaces=interfaces, ips=ips, routes=routes, dns=_dns_from_json(obj))


def _interface_from_json(obj: Mapping[str, Any], path: str) -> Interface:
    def text(key: str) -> str:
        return _F.as_str(obj.get(key), f"{path}.{key}")

    name = obj.get("name")
    if not isinstance(name, str):
        _F.as_str(name, f"{path}.name", required=True)  # names the problem
    return Interface(
        name=str(name),
        mac=text("mac"),
        mtu=_uint(obj, "mtu", path, zero_is_unset=True),
        sandbox=text("sandbox"),
        socket_path=text("socketPath"),
        pci_id=text("pciID"),
    )


def _ipconfig_from_json(
    obj: Mapping[str, Any], path: str, n_interfaces: int, check_version: bool
) -> IPConfig:
    address = _cidr_address(
        _F.as_str(obj.get("address"), f"{path}.address", required=True), f"{path}.address"
    )
    if check_version and obj.get("version") is not None:
        family = obj["version"]
        if family not in ("4", "6"):
            _F.fail(f"{path}.version", f'must be "4" or "6", not {family!r}')
        if family != str(address.version):
            _inconsistent(f"{path}.version", f"is {family!r} but the address is {address}")
    interface = _F.as_int(obj.get("interface"), f"{path}.interface")
    if interface is not None and not 0 <= interface < n_interfaces:
        _inconsistent(
            f"{path}.interface",
            f"index {interface} out of range: the result has {n_interfaces} interface(s)",
        )
    return IPConfig(
        address=address,
        gateway=_opt_address(obj, "gateway", path),
        interface=interface,
    )


def _route_from_json(obj: Mapping[str, Any], path: str, extended: bool = True) -> Route:
    dst = _network(_F.as_str(obj.get("dst"), f"{path}.dst", required=True), f"{path}.dst")
    gw = _opt_address(obj, "gw", path)
    if not extended:
        return Route(dst=dst, gw=gw)
    return Route(
        dst=dst,
        gw=gw,
        mtu=_uint(obj, "mtu", path, zero_is_unset=True),
        advmss=_uint(obj, "advmss", path, zero_is_unset=True),
        priority=_uint(obj, "priority", path, zero_is_unset=True),
        table=_uint(obj, "table", path, zero_is_unset=False),
        scope=_uint(obj, "scope", path, zero_is_unset=False),
    )


def _dns_from_json(obj: Mapping[str, Any]) -> DNS:
    dns = _F.as_object(obj.get("dns"), "dns")
    return DNS(
        nameservers=_F.as_strs(dns.get("nameservers"), "dns.nameservers"),
        domain=_F.as_str(dns.get("domain"), "dns.domain"),
        search=_F.as_strs(dns.get("search"), "dns.search"),
        options=_F.as_strs(dns.get("options"), "dns.options"),
    )


def _legacy_from_json(obj: Mapping[str, Any]) -> Result:
    ips: list[IPConfig] = []
    routes: list[Route] = []
    for key, family in (("ip4", 4), ("ip6", 6)):
        if obj.get(key) is None:
            continue
        section = _F.as_object(obj[key], key)
        address = _cidr_address(
            _F.as_str(section.get("ip"), f"{key}.ip", required=True), f"{key}.ip"
        )
        if address.version != family:
            _inconsistent(f"{key}.ip", f"{address} is not an IPv{family} address")
        ips.append(IPConfig(address=address, gateway=_opt_address(section, "gateway", key)))
        routes.extend(
            _route_from_json(o, p, False) for o, p in _objects(section, "routes", f"{key}.routes")
        )
    return Result(ips=ips, routes=routes, dns=_dns_from_json(obj))


# --------------------------------------------------------------------------- field helpers


def _inconsistent(path: str, what: str) -> NoReturn:
    raise CniError(Code.INVALID_CONFIG, f"invalid result: {path}: {what}")


def _uint(obj: Mapping[str, Any], key: str, path: str, *, zero_is_unset: bool) -> int | None:
    """A non-negative integer; 0 reads as unset where Go's omitempty would drop it."""
    value = _F.as_int(obj.get(key), f"{path}.{key}")
    if value is None:
        return None
    if value < 0:
        _F.fail(f"{path}.{key}", f"must be a non-negative integer, not {value!r}")
    if value == 0 and zero_is_unset:
        return None
    return value


def _opt_address(obj: Mapping[str, Any], key: str, path: str) -> IPAddress | None:
    text = _F.as_str(obj.get(key), f"{path}.{key}")
    if not text:
        return None
    if "%" in text:  # Go's net.ParseIP has no zones; neither do CNI results
        _F.fail(f"{path}.{key}", f"{text!r} is not an IP address")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        _F.fail(f"{path}.{key}", f"{text!r} is not an IP address")


def _cidr(text: str, path: str) -> tuple[IPAddress, int]:
    try:
        return parse_cidr(text)
    except ValueError:
        _F.fail(path, f"{text!r} is not a CIDR (address/prefix-length)")


def _cidr_address(text: str, path: str) -> IPInterface:
    """An address with its prefix length, host bits kept (10.1.2.3/24)."""
    return ipaddress.ip_interface(_cidr(text, path))


def _network(text: str, path: str) -> IPNetwork:
    """A route destination; host bits are masked off, as the kernel requires."""
    return ipaddress.ip_network(_cidr(text, path), strict=False)
