"""``--rss N``: the agent's memory idle, with N pods attached, and after detaching them all."""

from __future__ import annotations

import argparse
import datetime as dt

from .batches import batch
from .host import machine
from .leaks import check_clean
from .session import agent_mode, bench_session, require_root_and_binaries


def rss(args: argparse.Namespace) -> int:
    """Attach N pods through the agent, read its RSS, detach them all, check nothing is left."""
    require_root_and_binaries(args, need_ref=False)
    with bench_session(args) as bench:
        mode = agent_mode(bench)
        assert mode.agent is not None
        netns = bench.pods(args.rss)
        idle = mode.agent.rss_kib()
        atts = bench.attachments(mode, netns)
        batch(mode, "ADD", atts, args.parallel)
        loaded = mode.agent.rss_kib()
        hwm = mode.agent.hwm_kib()
        batch(mode, "DEL", atts, args.parallel)
        check_clean(mode, f"detaching {args.rss} pods")
        after = mode.agent.rss_kib()
        print(f"\n**{dt.date.today().isoformat()}**, {machine()}\n")
        print("| agent VmRSS | process MiB | with descendants MiB |\n|---|---:|---:|")
        for label, (own, total) in (
            ("idle, after warm-up", idle),
            (f"{args.rss} pods attached", loaded),
            ("all detached", after),
        ):
            print(f"| {label} | {own / 1024:.1f} | {total / 1024:.1f} |")
        print(
            f"\nVmHWM with {args.rss} pods: {hwm / 1024:.1f} MiB; target <= 100 MB: "
            f"{'met' if loaded[1] * 1024 <= 100e6 else 'MISSED'}"
        )
    return 0
