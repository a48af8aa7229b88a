"""Admin subcommands of ``loxi-cni`` (run without CNI_COMMAND)."""

from __future__ import annotations

import argparse
import json
from importlib.metadata import PackageNotFoundError, version

from loxicni.cni.version import SUPPORTED_VERSIONS


def package_version() -> str:
    try:
        return version("loxi-cni")
    except PackageNotFoundError:
        return "unknown"


def _version(args: argparse.Namespace) -> int:
    info = {"version": package_version(), "cniVersions": list(SUPPORTED_VERSIONS)}
    print(
        json.dumps(info)
        if args.json
        else f"loxi-cni {info['version']} (CNI {', '.join(SUPPORTED_VERSIONS)})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loxi-cni",
        description="loxi-cni: a CNI bridge plugin. Run by a container runtime with CNI_COMMAND "
        "set it is the plugin; without it, these admin commands are available.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("version", help="print the plugin version and the CNI versions it speaks")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_version)
    return parser


def cli_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))
