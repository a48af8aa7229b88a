"""The default subcommand: the modes side by side, round by round, then the report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .batches import batch
from .errors import AgentUnavailable
from .leaks import check_clean
from .modes import Mode
from .plot import cdf_png
from .report import report
from .session import bench_session, require_root_and_binaries
from .stats import Measured, Samples, harness_floor
from .version_exec import version_p50


def compare(args: argparse.Namespace) -> int:
    keys = [k for k in ("ref", "agent", "standalone") if k in args.modes]
    require_root_and_binaries(args, "ref" in keys)
    agent_note = ""
    started = time.monotonic()
    samples: Measured = {}
    with bench_session(args) as bench:
        modes: list[Mode] = []
        for key in keys:
            mode = bench.mode(key)
            if key == "agent":
                try:
                    bench.start_agent(mode)
                except AgentUnavailable as err:
                    agent_note = f"agent mode NOT measured: {err}"
                    print(f"*** {agent_note}\n*** continuing with the other modes", flush=True)
                    continue
            modes.append(mode)
        for mode in modes:
            bench.warm_up(mode)
        floor = harness_floor()
        print(
            f"warmed up {', '.join(m.title for m in modes)}; {args.rounds} round(s) of "
            f"{dict(args.plan)} pods per concurrency level",
            flush=True,
        )
        for rnd in range(args.rounds):
            for level, count in args.plan:
                netns = bench.pods(count)
                # Rotate who goes first each round, so drift hits every mode alike.
                order = modes[rnd % len(modes) :] + modes[: rnd % len(modes)]
                for mode in order:
                    atts = bench.attachments(mode, netns)
                    for verb in ("ADD", "DEL"):
                        lat, wall, cpu = batch(mode, verb, atts, level)
                        samples.setdefault((mode.key, level, verb), Samples()).add(lat, wall, cpu)
                    check_clean(mode, f"round {rnd + 1}, {level} at once")
            print(
                f"round {rnd + 1}/{args.rounds} done ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
        agent_cpu = ""
        for mode in modes:
            if mode.agent and mode.requests:
                used = mode.agent.cpu_seconds() - mode.agent_cpu0
                agent_cpu = (
                    f"; agent CPU {used / mode.requests * 1000:.2f} ms per call, "
                    f"RSS {mode.agent.rss_kib()[1] / 1024:.0f} MiB"
                )
    version: dict[str, float] | None = None
    if "ref" in keys and not args.no_version:
        version = version_p50({"ref": f"{args.reference_dir}/bridge", "ours": args.plugin})
    print()
    seconds = time.monotonic() - started
    print(report(keys, samples, args, floor, agent_note, agent_cpu, seconds, version))
    if args.plot:
        print(f"\nlatency CDFs: {cdf_png(samples, keys, args.levels, Path(args.plot))}")
    return 0
