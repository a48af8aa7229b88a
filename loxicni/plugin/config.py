"""The bridge plugin's network configuration, validated at the edge.

Every bad value becomes one CniError with code 7 naming the field, before anything is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loxicni.cni.errors import CniError, Code
from loxicni.cni.fields import Fields
from loxicni.cni.names import ifname_problem, valid_network_name
from loxicni.cni.types import Result

MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
VETH_PREFIX = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]{0,7}")
DEFAULT_BRIDGE = "cni0"
DEFAULT_VETH_PREFIX = "loxi"
# Keys of CNI_ARGS the plugin understands (others need IgnoreUnknown).
KNOWN_ARGS = frozenset(
    {
        "IgnoreUnknown",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
        "MAC",
        "IP",
    }
)


@dataclass(frozen=True)
class BridgeConfig:
    network: str
    cni_version: str
    bridge: str
    is_gateway: bool
    is_default_gateway: bool
    force_address: bool
    ip_masq: bool
    mtu: int  # 0: kernel default
    hairpin: bool
    promisc: bool
    vlan: int  # 0: none
    vlan_trunk: tuple[tuple[int, int], ...]
    preserve_default_vlan: bool
    mac: str | None  # the pod interface's MAC, after config < CNI_ARGS < args < runtimeConfig
    enable_dad: bool
    veth_prefix: str
    ipam: Mapping[str, Any]
    ipam_type: str
    prev_result: Result | None
    log_file: str | None
    sync_teardown: bool = False  # DEL answers only once the veth is deleted (no background)


_F = Fields(Code.INVALID_CONFIG)


def _invalid(field: str, why: str) -> CniError:
    return CniError(Code.INVALID_CONFIG, f"{field}: {why}")


def _bool(conf: Mapping[str, Any], key: str, default: bool = False) -> bool:
    return _F.as_bool(conf.get(key), key, default)


def _int(conf: Mapping[str, Any], key: str, low: int, high: int, where: str = "") -> int:
    return _F.as_int(conf.get(key), f"{where}.{key}" if where else key, low=low, high=high) or 0


def _str(conf: Mapping[str, Any], key: str, default: str = "") -> str:
    return _F.as_str(conf.get(key), key, default=default)


def _mtu(conf: Mapping[str, Any]) -> int:
    mtu = _int(conf, "mtu", 0, 65535)
    if mtu and mtu < 68:
        raise _invalid("mtu", f"{mtu} is below the minimum of 68")
    return mtu


def _vlan_trunk(conf: Mapping[str, Any]) -> tuple[tuple[int, int], ...]:
    trunk = conf.get("vlanTrunk")
    if trunk is None:
        return ()
    if not isinstance(trunk, list):
        raise _invalid("vlanTrunk", "must be a list of {id} or {minID, maxID}")
    out: list[tuple[int, int]] = []
    for i, item in enumerate(trunk):
        where = f"vlanTrunk[{i}]"
        if not isinstance(item, dict):
            raise _invalid(where, "must be an object")
        if "id" in item:
            vid = _int(item, "id", 1, 4094, where=where)
            out.append((vid, vid))
        elif "minID" in item or "maxID" in item:
            low = _int(item, "minID", 1, 4094, where=where)
            high = _int(item, "maxID", 1, 4094, where=where)
            if low > high:
                raise _invalid(where, f"minID {low} is greater than maxID {high}")
            out.append((low, high))
        else:
            raise _invalid(where, "needs id or minID and maxID")
    return tuple(out)


def _mac(conf: Mapping[str, Any], cni_args: Mapping[str, str]) -> str | None:
    candidates: list[tuple[str, Any]] = [
        ("mac", conf.get("mac")),
        ("CNI_ARGS MAC", cni_args.get("MAC")),
    ]
    args = conf.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict):
        candidates.append(("args.cni.mac", args["cni"].get("mac")))
    runtime = conf.get("runtimeConfig")
    if isinstance(runtime, dict):
        candidates.append(("runtimeConfig.mac", runtime.get("mac")))
    chosen: str | None = None
    for where, value in candidates:
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not MAC.fullmatch(value):
            raise _invalid(where, f"{value!r} is not a MAC address")
        if int(value[:2], 16) & 1:
            raise _invalid(where, f"{value} is a multicast address")
        chosen = value.lower()
    return chosen


def parse_config(
    conf: Mapping[str, Any],
    cni_version: str,
    cni_args: Mapping[str, str],
    prev_result: Result | None,
) -> BridgeConfig:
    """Validate the network configuration of one call."""
    network = _str(conf, "name")
    if not network:
        raise _invalid("name", "missing network name")
    if not valid_network_name(network):
        raise _invalid("name", f"{network!r} may only hold letters, digits, '_', '.' and '-'")
    bridge = _str(conf, "bridge", DEFAULT_BRIDGE) or DEFAULT_BRIDGE
    problem = ifname_problem(bridge)
    if problem is not None:
        raise _invalid("bridge", f"{bridge!r} is not a valid interface name: it {problem}")
    hairpin, promisc = _bool(conf, "hairpinMode"), _bool(conf, "promiscMode")
    if hairpin and promisc:
        raise _invalid("hairpinMode", "cannot be used together with promiscMode")
    vlan = _int(conf, "vlan", 0, 4094) or _int(conf, "vlanID", 0, 4094)
    trunk = _vlan_trunk(conf)
    if vlan and trunk:
        raise _invalid("vlanTrunk", "cannot be set together with vlan")
    prefix = _str(conf, "vethPrefix", DEFAULT_VETH_PREFIX) or DEFAULT_VETH_PREFIX
    if not VETH_PREFIX.fullmatch(prefix):
        raise _invalid("vethPrefix", f"{prefix!r}: 1-8 characters, a letter then [a-zA-Z0-9_-]")
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise _invalid("ipam", "missing or not an object")
    ipam_type = _str(ipam, "type")
    if not ipam_type:
        raise _invalid("ipam.type", "missing")
    is_default_gateway = _bool(conf, "isDefaultGateway")
    log_file = _str(conf, "logFile") or None
    return BridgeConfig(
        network=network,
        cni_version=cni_version,
        bridge=bridge,
        is_gateway=_bool(conf, "isGateway") or is_default_gateway,
        is_default_gateway=is_default_gateway,
        force_address=_bool(conf, "forceAddress"),
        ip_masq=_bool(conf, "ipMasq"),
        mtu=_mtu(conf),
        hairpin=hairpin,
        promisc=promisc,
        vlan=vlan,
        vlan_trunk=trunk,
        preserve_default_vlan=_bool(conf, "preserveDefaultVlan", True),
        mac=_mac(conf, cni_args),
        enable_dad=_bool(conf, "enabledad"),
        veth_prefix=prefix,
        ipam=ipam,
        ipam_type=ipam_type,
        prev_result=prev_result,
        log_file=log_file,
        sync_teardown=_bool(conf, "syncTeardown"),
    )
