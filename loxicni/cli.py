"""Admin subcommands of ``loxi-cni`` (run without CNI_COMMAND)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from loxicni.base import paths, wire
from loxicni.base.version import package_version
from loxicni.cni.version import SUPPORTED_VERSIONS
from loxicni.k8s.options import (
    CROSS_NODE_MODES,
    DEFAULT_CONF_DIR,
    DEFAULT_CONF_NAME,
    DEFAULT_DATA_ROOT,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_RESYNC,
    DEFAULT_VXLAN_DEVICE,
    DEFAULT_VXLAN_PORT,
    DEFAULT_VXLAN_VNI,
    KubeOptions,
    default_node_name,
)

DEFAULT_METRICS = "127.0.0.1:9617"


def _version(args: argparse.Namespace) -> int:
    info = {"version": package_version(), "cniVersions": list(SUPPORTED_VERSIONS)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"loxi-cni {info['version']} (CNI {', '.join(SUPPORTED_VERSIONS)})")
    return 0


def _kube_options(args: argparse.Namespace) -> KubeOptions | None:
    """Kubernetes mode is on with --kubeconfig or --in-cluster."""
    if not args.kubeconfig and not args.in_cluster:
        if args.cross_node != "none":
            raise SystemExit("loxi-cni agent: --cross-node needs Kubernetes mode")
        return None
    if args.kubeconfig and args.in_cluster:
        raise SystemExit("loxi-cni agent: --kubeconfig and --in-cluster exclude each other")
    options = KubeOptions(
        node_name=args.node_name or default_node_name(),
        kubeconfig=args.kubeconfig or None,
        conf_dir=Path(args.cni_conf_dir) if args.cni_conf_dir else None,
        conf_name=args.cni_conf_name,
        conf_template=Path(args.cni_conf_template) if args.cni_conf_template else None,
        data_root=Path(args.cni_data_root),
        grace_period=args.grace_period,
        resync=args.resync,
        network_policy=args.network_policy == "on",
        cross_node=args.cross_node,
        vxlan_vni=args.vxlan_vni,
        vxlan_port=args.vxlan_port,
        vxlan_device=args.vxlan_device,
    )
    _check_overlay(options)
    return options


def _check_overlay(options: KubeOptions) -> None:
    from loxicni.net.errors import OverlayError

    try:
        options.overlay()
    except OverlayError as exc:
        raise SystemExit(f"loxi-cni agent: {exc}") from exc


def _agent(args: argparse.Namespace) -> int:
    from loxicni.agent.run import run_agent
    from loxicni.base.logs import setup_logging

    kube = _kube_options(args)
    setup_logging()
    return run_agent(args.socket, None if args.metrics in ("", "off") else args.metrics, kube)


def _status(args: argparse.Namespace) -> int:
    from loxicni import client

    try:
        code, out = client.call_agent({wire.ADMIN_KEY: "status"}, b"", path=args.socket, timeout=10)
    except (client.AgentUnavailable, client.AgentLost) as exc:
        info = {"agent": "down", "socket": args.socket, "reason": str(exc)}
        print(json.dumps(info) if args.json else f"agent: down ({args.socket}: {exc})")
        return 1
    info = json.loads(out)
    if args.json:
        print(json.dumps(info))
        return code
    print(f"agent: {info['agent']} (pid {info['pid']}, version {info['version']})")
    print(f"uptime: {info['uptimeSeconds']:.0f} s")
    print(f"requests served: {info['requestsServed']}")
    print(f"attachments held: {info['attachments']}")
    for bad in info.get("quarantined", []):
        print(f"quarantined record (left untouched): {bad}")
    for network, count in sorted(info["addressesInUse"].items()):
        print(f"addresses in use, {network}: {count}")
    if "crossNode" in info:
        _print_cross_node(info["crossNode"])
    if "networkPolicy" in info:
        _print_network_policy(info["networkPolicy"])
    return code


def _print_cross_node(cross: dict[str, Any]) -> None:
    if "error" in cross:
        print(f"cross-node: cannot report ({cross['error']})")
        return
    ips = ", ".join(map(str, cross.get("nodeIPs") or [])) or "no node IP"
    print(f"cross-node: {cross['mode']} on {cross['node']} ({ips}), pod MTU {cross['podMTU']}")
    print(
        f"peers programmed: {cross['peersProgrammed']} of {cross['peers']} "
        f"(direct {cross['direct']}, vxlan {cross['viaVxlan']})"
    )
    print(
        f"last sync: {cross['lastSync'] or 'never'} ({cross['lastSyncRequests']} requests, "
        f"{cross['lastSyncSeconds']} s); {cross['reason']}: {cross['message']}"
    )
    for peer, messages in sorted(cross.get("errors", {}).items()):
        for message in messages:
            print(f"peer {peer}: {message}")
    for failure in cross.get("failures", []):
        print(f"refused: {failure}")


def _teardown(args: argparse.Namespace) -> int:
    from loxicni.agent import teardown
    from loxicni.net.errors import OverlayError
    from loxicni.net.nft import NftError
    from loxicni.net.overlay import OverlayConfig

    default = OverlayConfig(device4=f"{args.vxlan_device}4", device6=f"{args.vxlan_device}6")
    conf = Path(args.cni_conf_dir) / args.cni_conf_name if args.cni_conf_dir else None
    try:
        report = teardown.teardown(conf, default)
    except (OverlayError, NftError, OSError) as exc:
        print(f"loxi-cni teardown: {exc}")
        return 1
    if args.json:
        print(json.dumps(report.__dict__))
        return 0
    print(f"overlay routes removed: {report.routes}")
    print(f"vxlan devices removed: {', '.join(report.devices) or 'none'}")
    print(f"cluster networks unexempted: {report.cluster_networks}")
    print(f"masquerade table removed: {'yes' if report.masquerade_table else 'no'}")
    print(f"network policy table removed: {'yes' if report.policy_table else 'no'}")
    print(f"CNI config removed: {report.conf or 'none'}")
    print(f"bridges removed: {', '.join(report.bridges) or 'none'}")
    for kept in report.kept:
        print(f"kept: {kept}")
    return 0



def _print_network_policy(policy: dict[str, Any]) -> None:
    if "error" in policy:
        print(f"network policy: cannot report ({policy['error']})")
        return
    if not policy.get("enforcing", True):
        print(f"network policy: NOT enforced on this node ({policy['lastError']})")
        return
    state = "in step with the API" if policy["synced"] else "catching up"
    isolated = policy["isolated"]
    print(
        f"network policy: {policy['policies']} policies, {state}; pods isolated for ingress "
        f"{isolated['ingress']}, for egress {isolated['egress']}; last update "
        f"{policy['lastUpdateSeconds']} s"
    )
    for ref, sel in sorted(policy.get("selectedPods", {}).items()):
        ingress = ", ".join(sel["ingress"]) or "-"
        egress = ", ".join(sel["egress"]) or "-"
        print(f"pod {ref}: ingress {ingress}; egress {egress}")
    for ref, why in sorted(policy.get("unenforceable", {}).items()):
        print(f"policy {ref} not enforced: {why}")
    if policy.get("lastError"):
        print(f"network policy error: {policy['lastError']}")




def _add_version(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="print the plugin version and the CNI versions it speaks")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_version)


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="is the agent up: version, uptime, requests, attachments")
    p.add_argument(
        "--socket", default=paths.socket_path(), help="unix socket (default %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_status)


def _add_kube_options(p: argparse.ArgumentParser) -> None:
    kube = p.add_argument_group(
        "Kubernetes mode",
        "with --kubeconfig or --in-cluster: watch this node's Pods, write the CNI config from "
        "the Node's pod CIDRs, keep a PodNetworkInterface per attachment and the Pods' "
        "network-status annotation, release attachments of Pods gone without a DEL",
    )
    kube.add_argument("--kubeconfig", metavar="FILE", help="reach the API server with this")
    kube.add_argument(
        "--in-cluster", action="store_true", help="use the pod's ServiceAccount (a DaemonSet)"
    )
    kube.add_argument(
        "--node-name", metavar="NAME", help="this node (default: $NODE_NAME, else the hostname)"
    )
    kube.add_argument(
        "--cni-conf-dir",
        default=DEFAULT_CONF_DIR,
        metavar="DIR",
        help="write the node's CNI config here, '' to leave it alone (default %(default)s)",
    )
    kube.add_argument(
        "--cni-conf-name",
        default=DEFAULT_CONF_NAME,
        metavar="FILE",
        help="the config's file name (default %(default)s)",
    )
    kube.add_argument(
        "--cni-conf-template",
        metavar="FILE",
        help="the operator's config (a .conf or .conflist, e.g. from a ConfigMap); the Node's "
        "pod CIDRs become its host-local ranges (default: a built-in bridge config)",
    )
    kube.add_argument(
        "--cni-data-root",
        default=DEFAULT_DATA_ROOT,
        metavar="DIR",
        help="the template's ipam.dataDir must be in this directory (default %(default)s)",
    )
    kube.add_argument(
        "--grace-period",
        type=float,
        default=DEFAULT_GRACE_PERIOD,
        metavar="SECONDS",
        help="release an attachment whose Pod is gone after this long without a DEL "
        "(default %(default)s)",
    )
    kube.add_argument(
        "--resync",
        type=float,
        default=DEFAULT_RESYNC,
        metavar="SECONDS",
        help="full resync of the custom resources (and of the cross-node overlay) this often "
        "(default %(default)s)",
    )
    kube.add_argument(
        "--cross-node",
        choices=CROSS_NODE_MODES,
        default="none",
        help="reach the pods of the other nodes: 'routes' (a route to each node's pod CIDR "
        "via its node IP: one L2 segment), 'vxlan' (every node through a vxlan device), "
        "'auto' (routes to nodes one hop away, vxlan to the rest), 'none' (default)",
    )
    kube.add_argument(
        "--vxlan-vni",
        type=int,
        default=DEFAULT_VXLAN_VNI,
        metavar="VNI",
        help="VXLAN network identifier, the same on every node (default %(default)s)",
    )
    kube.add_argument(
        "--vxlan-port",
        type=int,
        default=DEFAULT_VXLAN_PORT,
        metavar="PORT",
        help="UDP port of the vxlan traffic, the same on every node (default %(default)s)",
    )
    kube.add_argument(
        "--vxlan-device",
        default=DEFAULT_VXLAN_DEVICE,
        metavar="NAME",
        help="vxlan device names: NAME4 and NAME6 (default %(default)s)",
    )
    kube.add_argument(
        "--network-policy",
        choices=("on", "off"),
        default="on",
        help="enforce NetworkPolicy for this node's pods with nftables (default %(default)s)",
    )


def _add_agent(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the node agent (foreground) serving the plugin")
    p.add_argument(
        "--socket", default=paths.socket_path(), help="unix socket (default %(default)s)"
    )
    p.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help="host:port for Prometheus metrics, or 'off' (default %(default)s)",
    )
    _add_kube_options(p)
    p.set_defaults(func=_agent)


def _add_teardown(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "teardown",
        help="uninstall from this node (agent stopped, pods gone): the cross-node overlay, "
        "the masquerade table's cluster networks, the CNI config and idle bridges",
    )
    p.add_argument(
        "--cni-conf-dir",
        default=DEFAULT_CONF_DIR,
        metavar="DIR",
        help="where the agent wrote the CNI config, '' to keep it (default %(default)s)",
    )
    p.add_argument("--cni-conf-name", default=DEFAULT_CONF_NAME, metavar="FILE")
    p.add_argument(
        "--vxlan-device",
        default=DEFAULT_VXLAN_DEVICE,
        metavar="NAME",
        help="the vxlan devices' names if the agent left no record (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_teardown)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loxi-cni",
        description="loxi-cni: a CNI bridge plugin. Run by a container runtime with CNI_COMMAND "
        "set it is the plugin; without it, these admin commands are available.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_version(sub)
    _add_agent(sub)
    _add_status(sub)
    _add_teardown(sub)
    return parser


def cli_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))
