"""``--cycles N``: N ADD+DEL cycles through one mode of ours, then nothing may be left."""

from __future__ import annotations

import argparse
import time

from .batches import batch
from .errors import BenchError
from .host import sh
from .leaks import check_clean, private_files
from .session import agent_mode, bench_session, require_root_and_binaries
from .settings import HOST_DIRS, IFNAME
from .stats import percentile


def cycles(args: argparse.Namespace) -> int:
    """N ADD+DEL cycles (``--parallel`` pods at a time), then nothing may be left anywhere."""
    require_root_and_binaries(args, need_ref=False)
    with bench_session(args) as bench:
        mode = agent_mode(bench, args.via)
        netns = bench.pods(args.parallel)
        before = (mode.agent.rss_kib()[1], mode.agent.fds()) if mode.agent else None
        adds: list[float] = []
        dels: list[float] = []
        start = time.perf_counter()
        done = 0
        while done < args.cycles:
            atts = bench.attachments(mode, netns[: min(args.parallel, args.cycles - done)])
            adds += batch(mode, "ADD", atts, len(atts))[0]
            dels += batch(mode, "DEL", atts, len(atts))[0]
            done += len(atts)
            if done % 100 < len(atts):
                print(f"{done}/{args.cycles} cycles", flush=True)
        wall = time.perf_counter() - start
        check_clean(mode, f"{args.cycles} cycles")
        for ns in netns:
            if f" {IFNAME}@" in sh("ip", "-n", ns, "-o", "link", "show"):
                raise BenchError(f"{IFNAME} left in pod netns {ns}")
        data_files = sum(1 for p in mode.data_dir.rglob("*") if p.is_file())
        private_count = len(private_files(mode))
        print(
            f"\n{args.cycles} ADD+DEL cycles via {mode.title}, {args.parallel} at a time, in "
            f"{wall:.1f} s ({args.cycles / wall:.1f} cycles/s); ADD p50 "
            f"{percentile(adds, 50) * 1000:.1f} ms, DEL p50 {percentile(dels, 50) * 1000:.1f} ms"
        )
        print(
            f"left: 0 addresses, 0 veths; {data_files} files in the dataDir (lock + "
            f"last_reserved_ip only), {private_count} in the run and state dirs (as many as "
            f"after warm-up: {len(mode.baseline)}); none of ours in {', '.join(HOST_DIRS)}"
        )
        if mode.agent and before:
            after = (mode.agent.rss_kib()[1], mode.agent.fds())
            print(
                f"agent RSS {before[0] / 1024:.1f} -> {after[0] / 1024:.1f} MiB, "
                f"open fds {before[1]} -> {after[1]}"
            )
    print("OK")
    return 0
