"""The node's CNI config: an operator's template with the Node's pod CIDRs as the IPAM ranges.

Kubernetes assigns every Node a band of the cluster's pod network (``spec.podCIDRs``, one per
family); the runtime finds our plugin through the config written here. Everything in the
template is kept except what names the subnet: the host-local ``subnet``, ``rangeStart``,
``rangeEnd``, ``gateway`` and ``ranges`` are replaced by one range set per pod CIDR. The file is
replaced atomically (temp file + rename in the same directory), so a runtime reading the
directory never sees half a config, and rewritten only when its content changes (runtimes
reload on every change).

The config reaches the plugin, which runs as root, so whoever edits the template holds a
node's root. Its loxi-cni entry is still held to what loxi-cni takes: a key it does not know
is refused, and the paths it writes or reads on the template's say must stay in their place,
with no symlink on the way: ``logFile`` directly in the log directory, ``ipam.dataDir`` in
``/var/lib/cni`` (``--cni-data-root``), ``ipam.resolvConf`` one of the system's resolv.conf
files or a file of the template's own ConfigMap (``/etc/loxi-cni``). A refused template writes
nothing; the node keeps its last config and the agent's status says why.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loxicni.base import files, paths
from loxicni.k8s.options import DEFAULT_DATA_ROOT

PLUGIN_TYPE = "loxi-cni"
SUBNET_KEYS = ("subnet", "rangeStart", "rangeEnd", "gateway", "ranges")
# The keys of the loxi-cni entry a template may hold (the README's configuration table;
# runtimeConfig and args are the runtime's to fill, per pod).
PLUGIN_KEYS = frozenset(
    {
        "type", "name", "cniVersion", "capabilities", "bridge", "isGateway", "isDefaultGateway",
        "forceAddress", "ipMasq", "mtu", "hairpinMode", "promiscMode", "vlan", "vlanID",
        "vlanTrunk", "preserveDefaultVlan", "mac", "enabledad", "vethPrefix", "syncTeardown",
        "logFile", "ipam",
    }
)  # fmt: skip
IPAM_KEYS = frozenset({"type", "routes", "dataDir", "resolvConf", *SUBNET_KEYS})
SYSTEM_RESOLV_CONFS = frozenset(
    {
        "/etc/resolv.conf",
        "/run/systemd/resolve/resolv.conf",
        "/run/systemd/resolve/stub-resolv.conf",
    }
)
TEMPLATE_DIR = "/etc/loxi-cni"  # where the DaemonSet mounts the template's ConfigMap

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
    template: Mapping[str, Any],
    pod_cidrs: Sequence[str],
    mtu: int | None = None,
    data_root: str = DEFAULT_DATA_ROOT,
) -> dict[str, Any]:
    """The conflist for a node with ``pod_cidrs``; the template itself is left untouched.
    ``mtu``: the pod MTU where the template sets none (the cross-node overlay's). TemplateError
    if the template cannot carry them, or holds what loxi-cni does not take (``data_root``:
    where its ``ipam.dataDir`` may be)."""
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
    _check_keys(plugin, ipam)
    _check_paths(plugin, ipam, os.path.normpath(data_root))
    for key in SUBNET_KEYS:
        ipam.pop(key, None)
    ipam["ranges"] = [[{"subnet": str(net)}] for net in networks]
    if "routes" not in ipam:
        ipam["routes"] = [{"dst": "0.0.0.0/0" if n.version == 4 else "::/0"} for n in networks]
    return conflist


def _check_keys(plugin: Mapping[str, Any], ipam: Mapping[str, Any]) -> None:
    unknown = sorted(set(plugin) - PLUGIN_KEYS) + sorted(f"ipam.{k}" for k in set(ipam) - IPAM_KEYS)
    if unknown:
        raise TemplateError(
            f"the template's {PLUGIN_TYPE} entry holds keys loxi-cni does not take: "
            + ", ".join(unknown)
        )


def _check_paths(plugin: Mapping[str, Any], ipam: Mapping[str, Any], data_root: str) -> None:
    if "logFile" in plugin:
        _confine("logFile", plugin["logFile"], os.path.normpath(paths.log_dir()), directly=True)
    if "dataDir" in ipam:
        _confine("ipam.dataDir", ipam["dataDir"], data_root)
    resolv = ipam.get("resolvConf")
    if resolv is not None and resolv not in SYSTEM_RESOLV_CONFS:
        # The ConfigMap's volume is symlinks into its own timestamped directory: those may
        # stay inside it, nothing may lead out.
        _confine("ipam.resolvConf", resolv, TEMPLATE_DIR, directly=True, links_within=True)


def _confine(
    key: str, value: Any, root: str, *, directly: bool = False, links_within: bool = False
) -> None:
    """``value`` must be a path below ``root`` (directly in it if ``directly``), written plainly
    (absolute, no "..", "." or "//"), and, as far as it exists, must pass no symlink below
    ``root``, or only ones resolving inside ``root`` when ``links_within``."""
    where = f"directly in {root}" if directly else f"in {root}"
    if (
        not isinstance(value, str)
        or not value.startswith(root + "/")
        or os.path.normpath(value) != value
        or (directly and os.path.dirname(value) != root)
    ):
        raise TemplateError(f"the template's {key} {value!r} must be a path {where}")
    real_root = os.path.realpath(root)
    step = root
    for part in value[len(root) + 1 :].split("/"):
        step = f"{step}/{part}"
        if not os.path.lexists(step):
            return
        if not os.path.islink(step):
            continue
        resolved = os.path.realpath(step)
        if not (links_within and resolved.startswith(real_root + "/")):
            raise TemplateError(f"the template's {key} {value!r} passes a symlink ({step})")


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
