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
DEFAULT_TREE_DIR = "/opt/loxi-cni"
DEFAULT_CNI_BIN_DIR = "/opt/cni/bin"


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
    if info.get("deletionsPending"):
        print(f"deletions pending (DEL answered, veth going): {info['deletionsPending']}")
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


def _install_host(args: argparse.Namespace) -> int:
    from loxicni.agent.install import InstallError, install_host
    from loxicni.base import bundle

    tree = bundle.running()
    if tree is None:
        print("loxi-cni install-host: runs from a self-contained tree (the image's)")
        return 1
    try:
        done = install_host(tree, Path(args.host_root), args.tree_dir, args.cni_bin_dir)
    except (InstallError, OSError) as exc:
        print(f"loxi-cni install-host: {exc}")
        return 1
    plugin = f"{args.cni_bin_dir.rstrip('/')}/loxi-cni"
    how = "copied" if done.copied else "already there"
    print(f"installed {plugin}: loxi-cni {done.version}, tree {done.tree} ({how})")
    if done.replaced:
        print(f"replaced the executable of {done.replaced} (kept, for calls still running)")
    for removed in done.removed:
        print(f"removed {args.tree_dir.rstrip('/')}/{removed}")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from loxicni import client
    from loxicni.agent.uninstall import uninstall
    from loxicni.net.errors import OverlayError
    from loxicni.net.nft import NftError
    from loxicni.net.overlay import OverlayConfig

    try:
        code, out = client.call_agent({wire.ADMIN_KEY: "status"}, b"", timeout=10)
    except (client.AgentUnavailable, client.AgentLost):
        pass
    else:
        pid = json.loads(out).get("pid") if code == 0 else "?"
        print(
            f"loxi-cni uninstall: the agent is running (pid {pid}): remove its DaemonSet "
            "first (kubectl delete -f deploy/), or stop it"
        )
        return 1
    conf = Path(args.cni_conf_dir) / args.cni_conf_name if args.cni_conf_dir else None
    overlay = OverlayConfig(device4=f"{args.vxlan_device}4", device6=f"{args.vxlan_device}6")
    try:
        done = uninstall(conf, Path(args.tree_dir), Path(args.cni_bin_dir), args.force, overlay)
    except (OverlayError, NftError, OSError) as exc:
        print(f"loxi-cni uninstall: {exc}")
        return 1
    if args.json:
        print(json.dumps(done.__dict__))
        return 1 if done.in_use else 0
    if done.in_use:
        print("loxi-cni uninstall: pods are still attached; nothing was removed.")
        print("Delete them (or drain the node), then run it again; --force releases them.")
        for attached in done.in_use:
            print(f"attached: {attached}")
        return 1
    print(f"CNI config removed: {done.conf or 'none'}")
    print(f"attachments released: {len(done.released)}")
    print(f"overlay routes removed: {done.routes}")
    print(f"vxlan devices removed: {', '.join(done.devices) or 'none'}")
    print(f"cluster networks unexempted: {done.cluster_networks}")
    print(f"bridges removed: {', '.join(done.bridges) or 'none'}")
    print(f"masquerade table removed: {'yes' if done.masquerade_table else 'no'}")
    print(f"network policy table removed: {'yes' if done.policy_table else 'no'}")
    print(f"host-local stores removed: {', '.join(done.stores) or 'none'}")
    print(f"executable removed: {done.executable or 'none'}")
    print(f"trees removed: {', '.join(done.trees) or 'none'}")
    for kept in done.kept:
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


def _add_install_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tree-dir",
        default=DEFAULT_TREE_DIR,
        metavar="DIR",
        help="the host directory of the self-contained trees (default %(default)s)",
    )
    p.add_argument(
        "--cni-bin-dir",
        default=DEFAULT_CNI_BIN_DIR,
        metavar="DIR",
        help="the runtime's CNI bin dir, where loxi-cni goes (default %(default)s)",
    )


def _add_install_host(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install-host",
        help="install the plugin on the host from this self-contained tree (the DaemonSet's "
        "init container): the tree in --tree-dir, the executable in --cni-bin-dir",
    )
    p.add_argument(
        "--host-root",
        default="/",
        metavar="DIR",
        help="where the host's directories are mounted (default %(default)s)",
    )
    _add_install_options(p)
    p.set_defaults(func=_install_host)


def _add_uninstall(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "uninstall",
        help="remove loxi-cni from this node once its DaemonSet is gone and its pods with it: "
        "the CNI config, attachments, the cross-node overlay, bridges, masquerade table, "
        "stores, records, executable, trees",
    )
    _add_install_options(p)
    p.add_argument(
        "--cni-conf-dir",
        default=DEFAULT_CONF_DIR,
        metavar="DIR",
        help="where the agent wrote the CNI config (default %(default)s)",
    )
    p.add_argument("--cni-conf-name", default=DEFAULT_CONF_NAME, metavar="FILE")
    p.add_argument(
        "--vxlan-device",
        default=DEFAULT_VXLAN_DEVICE,
        metavar="NAME",
        help="the vxlan devices' names if the agent left no record (default %(default)s)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also release the pods still attached: their network goes at once",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_uninstall)


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
    _add_install_host(sub)
    _add_uninstall(sub)
    return parser


def cli_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))
