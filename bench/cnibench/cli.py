"""The command line: flags, and which subcommand they ask for."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .compare import compare
from .cycles import cycles
from .errors import BenchError
from .rss import rss
from .settings import PLUGIN, REFERENCE_DIR, TITLES

DESCRIPTION = (
    "loxi-cni against the reference Go bridge plugin: ADD/DEL latency and throughput, leaks, RSS."
)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="2 rounds of 8/16/32 pods (~1 min)")
    p.add_argument("--rounds", type=int, help="rounds per mode and level (default 5)")
    p.add_argument("--levels", type=_ints, default=[1, 8, 32], help="concurrency levels")
    p.add_argument("--pods", type=_ints, help="pods per round at each level (default 16,32,64)")
    p.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=["ref", "agent", "standalone"],
        help="subset of ref,agent,standalone",
    )
    p.add_argument("--cycles", type=int, help="instead: N ADD+DEL cycles, then check for leaks")
    p.add_argument("--rss", type=int, help="instead: the agent's RSS with N pods attached")
    p.add_argument("--parallel", type=int, default=4, help="calls at once for --cycles/--rss")
    p.add_argument(
        "--via", choices=["agent", "standalone"], default="agent", help="what --cycles goes through"
    )
    p.add_argument(
        "--plot", default="", metavar="PNG", help="also write the latency CDFs to this PNG file"
    )
    p.add_argument("--no-version", action="store_true", help="skip the VERSION exec timing")
    p.add_argument("--plugin", default=PLUGIN)
    p.add_argument("--reference-dir", default=REFERENCE_DIR)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.pods = args.pods or ([8, 16, 32] if args.quick else [16, 32, 64])
    if len(args.pods) != len(args.levels):
        p.error("--pods needs one count per level")
    args.plan = list(zip(args.levels, args.pods, strict=True))
    if any(level > pods for level, pods in args.plan):
        p.error("--pods: each count must be at least its level")
    if unknown := set(args.modes) - set(TITLES):
        p.error(f"unknown modes {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.cycles:
            return cycles(args)
        if args.rss:
            return rss(args)
        return compare(args)
    except BenchError as err:
        print(f"\nBENCH FAILED: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
