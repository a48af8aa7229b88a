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
import re
from typing import Any, NoReturn

from loxicni.cni.errors import CniError, Code
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
_PREFIX_RE = re.compile(r"[0-9]{1,3}")


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
    if not isinstance(obj, dict):
        _bad("result", f"must be a JSON object, not {_kind(obj)}")
    version = obj.get("cniVersion")
    if version is None or version == "":
        if default_version is None:
            _bad("cniVersion", "missing")
        version = default_version
    if not isinstance(version, str):
        _bad("cniVersion", f"must be a string, not {_kind(version)}")
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


def _modern_from_json(obj: JsonObj, check_ip_version: bool) -> Result:
    interfaces = [
        _interface_from_json(_as_obj(item, f"interfaces[{n}]"), f"interfaces[{n}]")
        for n, item in enumerate(_opt_list(obj, "interfaces", "interfaces"))
    ]
    ips = [
        _ipconfig_from_json(
            _as_obj(item, f"ips[{n}]"), f"ips[{n}]", len(interfaces), check_ip_version
        )
        for n, item in enumerate(_opt_list(obj, "ips", "ips"))
    ]
    routes = [
        _route_from_json(_as_obj(item, f"routes[{n}]"), f"routes[{n}]")
        for n, item in enumerate(_opt_list(obj, "routes", "routes"))
    ]
    return Result(interfaces=interfaces, ips=ips, routes=routes, dns=_dns_from_json(obj))


def _interface_from_json(obj: JsonObj, path: str) -> Interface:
    name = obj.get("name")
    if not isinstance(name, str):
        _bad(f"{path}.name", "missing" if name is None else f"must be a string, not {_kind(name)}")
    return Interface(
        name=name,
        mac=_opt_str(obj, "mac", path),
        mtu=_opt_uint(obj, "mtu", path, zero_is_unset=True),
        sandbox=_opt_str(obj, "sandbox", path),
        socket_path=_opt_str(obj, "socketPath", path),
        pci_id=_opt_str(obj, "pciID", path),
    )


def _ipconfig_from_json(
    obj: JsonObj, path: str, n_interfaces: int, check_version: bool
) -> IPConfig:
    address = _cidr_address(_req_str(obj, "address", path), f"{path}.address")
    if check_version and obj.get("version") is not None:
        family = obj["version"]
        if family not in ("4", "6"):
            _bad(f"{path}.version", f'must be "4" or "6", not {family!r}')
        if family != str(address.version):
            _inconsistent(f"{path}.version", f"is {family!r} but the address is {address}")
    interface = _opt_int(obj, "interface", path)
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


def _route_from_json(obj: JsonObj, path: str, extended: bool = True) -> Route:
    dst = _network(_req_str(obj, "dst", path), f"{path}.dst")
    gw = _opt_address(obj, "gw", path)
    if not extended:
        return Route(dst=dst, gw=gw)
    return Route(
        dst=dst,
        gw=gw,
        mtu=_opt_uint(obj, "mtu", path, zero_is_unset=True),
        advmss=_opt_uint(obj, "advmss", path, zero_is_unset=True),
        priority=_opt_uint(obj, "priority", path, zero_is_unset=True),
        table=_opt_uint(obj, "table", path, zero_is_unset=False),
        scope=_opt_uint(obj, "scope", path, zero_is_unset=False),
    )


def _dns_from_json(obj: JsonObj) -> DNS:
    raw = obj.get("dns")
    if raw is None:
        return DNS()
    dns = _as_obj(raw, "dns")
    return DNS(
        nameservers=_opt_str_list(dns, "nameservers", "dns"),
        domain=_opt_str(dns, "domain", "dns"),
        search=_opt_str_list(dns, "search", "dns"),
        options=_opt_str_list(dns, "options", "dns"),
    )


def _legacy_from_json(obj: JsonObj) -> Result:
    ips: list[IPConfig] = []
    routes: list[Route] = []
    for key, family in (("ip4", 4), ("ip6", 6)):
        raw = obj.get(key)
        if raw is None:
            continue
        section = _as_obj(raw, key)
        address = _cidr_address(_req_str(section, "ip", key), f"{key}.ip")
        if address.version != family:
            _inconsistent(f"{key}.ip", f"{address} is not an IPv{family} address")
        ips.append(IPConfig(address=address, gateway=_opt_address(section, "gateway", key)))
        routes.extend(
            _route_from_json(_as_obj(item, f"{key}.routes[{n}]"), f"{key}.routes[{n}]", False)
            for n, item in enumerate(_opt_list(section, "routes", f"{key}.routes"))
        )
    return Result(ips=ips, routes=routes, dns=_dns_from_json(obj))


# --------------------------------------------------------------------------- field helpers


def _bad(path: str, what: str) -> NoReturn:
    raise CniError(Code.DECODE_FAILURE, f"invalid result: {path}: {what}")


def _inconsistent(path: str, what: str) -> NoReturn:
    raise CniError(Code.INVALID_CONFIG, f"invalid result: {path}: {what}")


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _as_obj(value: Any, path: str) -> JsonObj:
    if not isinstance(value, dict):
        _bad(path, f"must be an object, not {_kind(value)}")
    return value


def _req_str(obj: JsonObj, key: str, path: str) -> str:
    value = obj.get(key)
    if value is None:
        _bad(f"{path}.{key}", "missing")
    if not isinstance(value, str):
        _bad(f"{path}.{key}", f"must be a string, not {_kind(value)}")
    return value


def _opt_str(obj: JsonObj, key: str, path: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        _bad(f"{path}.{key}", f"must be a string, not {_kind(value)}")
    return value


def _opt_list(obj: JsonObj, key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        _bad(path, f"must be an array, not {_kind(value)}")
    return value


def _opt_str_list(obj: JsonObj, key: str, path: str) -> list[str]:
    items = _opt_list(obj, key, f"{path}.{key}")
    for n, item in enumerate(items):
        if not isinstance(item, str):
            _bad(f"{path}.{key}[{n}]", f"must be a string, not {_kind(item)}")
    return list(items)


def _opt_int(obj: JsonObj, key: str, path: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int subclass in Python but not a number in JSON.
    if not isinstance(value, int) or isinstance(value, bool):
        _bad(f"{path}.{key}", f"must be an integer, not {value!r}")
    return value


def _opt_uint(obj: JsonObj, key: str, path: str, *, zero_is_unset: bool) -> int | None:
    """A non-negative integer; 0 reads as unset where Go's omitempty would drop it."""
    value = _opt_int(obj, key, path)
    if value is None:
        return None
    if value < 0:
        _bad(f"{path}.{key}", f"must be a non-negative integer, not {value!r}")
    if value == 0 and zero_is_unset:
        return None
    return value


def _opt_address(obj: JsonObj, key: str, path: str) -> IPAddress | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        _bad(f"{path}.{key}", f"must be a string, not {_kind(value)}")
    return _address(value, f"{path}.{key}")


def _address(text: str, path: str) -> IPAddress:
    if "%" in text:  # Go's net.ParseIP has no zones; neither do CNI results
        _bad(path, f"{text!r} is not an IP address")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        _bad(path, f"{text!r} is not an IP address")


def _split_cidr(text: str, path: str) -> tuple[str, str]:
    """Insist on "ADDR/LEN": ipaddress would also take a bare address or a dotted netmask."""
    addr, sep, prefix = text.partition("/")
    if not sep or not _PREFIX_RE.fullmatch(prefix) or "%" in addr:
        _bad(path, f"{text!r} is not a CIDR (address/prefix-length)")
    return addr, prefix


def _cidr_address(text: str, path: str) -> IPInterface:
    """An address with its prefix length, host bits kept (10.1.2.3/24)."""
    _split_cidr(text, path)
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        _bad(path, f"{text!r} is not a CIDR (address/prefix-length)")


def _network(text: str, path: str) -> IPNetwork:
    """A route destination; host bits are masked off, as the kernel requires."""
    _split_cidr(text, path)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        _bad(path, f"{text!r} is not a CIDR (address/prefix-length)")
