"""The node's CNI config: an operator's template with the Node's pod CIDRs as the IPAM ranges.

Kubernetes assigns every Node a band of the cluster's pod network (``spec.podCIDRs``, one per
family); the runtime finds our plugin through the config written here. Everything in the
template is kept except what names the subnet: the host-local ``subnet``, ``rangeStart``,
``rangeEnd``, ``gateway`` and ``ranges`` are replaced by one range set per pod CIDR. The file is
replaced atomically (temp file + rename in the same directory), so a runtime reading the
directory never sees half a config, and rewritten only when its content changes (runtimes
reload on every change).
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loxicni.base import files

PLUGIN_TYPE = "loxi-cni"
SUBNET_KEYS = ("subnet", "rangeStart", "rangeEnd", "gateway", "ranges")

BUILTIN_TEMPLATE: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "loxi-cni",
    "plugins": [
        {
            "type": PLUGIN_TYPE,
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": True,
            "ipam": {"type": "host-local"},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


class TemplateError(ValueError):
    """The template cannot carry the node's pod CIDRs."""


def load_template(path: Path | None) -> dict[str, Any]:
    if path is None:
        return copy.deepcopy(BUILTIN_TEMPLATE)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TemplateError(f"cannot read the CNI config template {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError(f"the CNI config template {path} is not a JSON object")
    return data


def _as_conflist(conf: dict[str, Any]) -> dict[str, Any]:
    """A single-plugin config wrapped in a list: one file format for every template."""
    if "plugins" in conf:
        if not isinstance(conf["plugins"], list):
            raise TemplateError("the template's plugins is not a list")
        return conf
    return {
        "cniVersion": conf.get("cniVersion", "1.0.0"),
        "name": conf.get("name", PLUGIN_TYPE),
        "plugins": [conf],
    }


def pod_networks(pod_cidrs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The Node's pod CIDRs, validated, at most one per family, in the Node's order."""
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for cidr in pod_cidrs:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise TemplateError(f"the Node's pod CIDR {cidr!r} is not a network") from exc
        if all(n.version != net.version for n in out):
            out.append(net)
    return out


def _our_plugin(conflist: Mapping[str, Any]) -> dict[str, Any] | None:
    return next(
        (p for p in conflist["plugins"] if isinstance(p, dict) and p.get("type") == PLUGIN_TYPE),
        None,
    )


def sets_mtu(template: Mapping[str, Any]) -> bool:
    """Whether the template sets the pod MTU itself (then it is kept as it is)."""
    try:
        plugin = _our_plugin(_as_conflist(dict(template)))
    except TemplateError:
        return False
    return plugin is not None and "mtu" in plugin


def render(
    template: Mapping[str, Any], pod_cidrs: Sequence[str], mtu: int | None = None
) -> dict[str, Any]:
    """The conflist for a node with ``pod_cidrs``; the template itself is left untouched.
    ``mtu``: the pod MTU where the template sets none (the cross-node overlay's)."""
    networks = pod_networks(pod_cidrs)
    if not networks:
        raise TemplateError("the Node has no pod CIDR")
    conflist = _as_conflist(copy.deepcopy(dict(template)))
    plugin = _our_plugin(conflist)
    if plugin is None:
        raise TemplateError(f'the template has no plugin of type "{PLUGIN_TYPE}"')
    if mtu is not None:
        plugin.setdefault("mtu", mtu)
    ipam = plugin.setdefault("ipam", {"type": "host-local"})
    if not isinstance(ipam, dict) or ipam.get("type", "host-local") != "host-local":
        raise TemplateError("the pod CIDR goes to a host-local IPAM; the template has another")
    ipam.setdefault("type", "host-local")
    for key in SUBNET_KEYS:
        ipam.pop(key, None)
    ipam["ranges"] = [[{"subnet": str(net)}] for net in networks]
    if "routes" not in ipam:
        ipam["routes"] = [{"dst": "0.0.0.0/0" if n.version == 4 else "::/0"} for n in networks]
    return conflist


def write_atomically(path: Path, conf: Mapping[str, Any]) -> bool:
    """Replace ``path`` with ``conf`` unless it already holds it; True if written. Synced:
    the runtime must find the config after a power loss as well."""
    text = json.dumps(conf, indent=2) + "\n"
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, text.encode(), mode=0o644, sync=True)
    return True
