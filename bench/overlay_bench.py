"""The overlay's cost at cluster scale: programming N remote nodes into an empty node, and
what one Node change costs afterwards.

For each mode (``vxlan``, ``routes``) a fresh network namespace plays the node: an underlay
veth holding 10.0.0.1/16 and fd00:50::1/64, so N peers (10.0.i.j, fd00:50::i) are all one
hop away and ``routes`` reaches them too. The peers are dual-stack (pod CIDRs 10.(128+i/256).
(i%256).0/24 and fd00:244:i::/64), so N peers mean 2N routes, plus 2N neighbours and 2N FDB
entries with vxlan. Timed, each through ``loxicni.net.overlay.sync`` on a netlink socket
bound to the namespace:

* ``initial``: everything from empty (devices, reads, plan, batched requests);
* ``no change``: the same peers again (reads only);
* ``one change``: one peer's node IPs change (vxlan: its FDB entries; routes: its routes);
* ``one removed``: one peer gone;
* ``teardown``: all of ours removed.

Each row gives the wall time (median and worst of the rounds), the CPU time of this process
(which includes the kernel's work on the requests, done in our system calls), the requests
that change the kernel, the reads (dumps and gets) and the system calls that sent them.
The namespaces are removed at the end.

Usage (as root)::

    overlay_bench.py [--peers 1000] [--rounds 3] [--modes vxlan,routes] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from underlay_node import underlay_netns  # bench/, this script's directory

from loxicni.net import netns, overlay
from loxicni.net.overlay import OverlayConfig
from loxicni.net.peers import Mode, Peer
from tests.support.counting_rtnl import CountingRtnl


def peers(count: int) -> list[Peer]:
    return [
        Peer(
            name=f"node-{i}",
            node_ips=(
                ip_address(f"10.0.{2 + i // 250}.{1 + i % 250}"),
                ip_address(f"fd00:50::{i + 2:x}"),
            ),
            pod_cidrs=(
                ip_network(f"10.{128 + i // 256}.{i % 256}.0/24"),
                ip_network(f"fd00:244:{i + 2:x}::/64"),
            ),
        )
        for i in range(count)
    ]


def run_mode(mode: Mode, count: int) -> list[dict[str, Any]]:
    name, fd = underlay_netns("ovlbench")
    rt = CountingRtnl(netns.netlink_socket_in(fd))
    rows: list[dict[str, Any]] = []
    try:
        config = OverlayConfig(mode=mode)
        local = overlay.local_node(
            rt,
            "node-self",
            (ip_address("10.0.0.1"), ip_address("fd00:50::1")),
            (ip_network("10.127.0.0/24"), ip_network("fd00:244:1::/64")),
        )
        everyone = peers(count)
        changed = list(everyone)
        changed[count // 2] = replace(
            everyone[count // 2],
            node_ips=(ip_address("10.0.255.1"), ip_address("fd00:50::ffff")),
        )

        def step(label: str, fn: Any) -> None:
            rt.counts()
            start, cpu = time.perf_counter(), time.process_time()
            result = fn()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            modifying, reads, sends = rt.counts()
            failures = getattr(result, "failures", [])
            if failures:
                raise SystemExit(f"{mode} {label}: {failures[:3]}")
            rows.append(
                {
                    "mode": str(mode),
                    "step": label,
                    "ms": elapsed * 1e3,
                    "cpu_ms": cpu * 1e3,
                    "modifying": modifying,
                    "reads": reads,
                    "syscalls": sends,
                }
            )

        step("initial", lambda: overlay.sync(rt, local, everyone, config))
        step("no change", lambda: overlay.sync(rt, local, everyone, config))
        step("one change", lambda: overlay.sync(rt, local, changed, config))
        step("one removed", lambda: overlay.sync(rt, local, changed[:-1], config))
        step("teardown", lambda: overlay.teardown(rt, config))
    finally:
        rt.close()
        os.close(fd)
        subprocess.run(["ip", "netns", "del", name], check=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="vxlan,routes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modes = [Mode(m) for m in args.modes.split(",")]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for mode in modes:
            for row in run_mode(mode, args.peers):
                results.setdefault((row["mode"], row["step"]), []).append(row)
    summary = [
        {
            **rows[0],
            "ms": statistics.median(r["ms"] for r in rows),
            "ms_max": max(r["ms"] for r in rows),
            "cpu_ms": statistics.median(r["cpu_ms"] for r in rows),
        }
        for rows in results.values()
    ]
    if args.json:
        print(json.dumps({"peers": args.peers, "rounds": args.rounds, "rows": summary}, indent=1))
        return
    print(f"{args.peers} dual-stack peers, median of {args.rounds} rounds")
    print(
        f"{'mode':<7} {'step':<12} {'ms':>8} {'max ms':>8} {'cpu ms':>8} "
        f"{'changes':>8} {'reads':>6} {'syscalls':>8}"
    )
    for row in summary:
        print(
            f"{row['mode']:<7} {row['step']:<12} {row['ms']:8.1f} {row['ms_max']:8.1f} "
            f"{row['cpu_ms']:8.1f} "
            f"{row['modifying']:8d} {row['reads']:6d} {row['syscalls']:8d}"
        )


if __name__ == "__main__":
    main()
