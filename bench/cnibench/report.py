"""The comparison's markdown report: header, the table of modes side by side, notes, targets."""

from __future__ import annotations

import argparse
import datetime as dt

from .host import machine, versions
from .settings import CNI_VERSION, TITLES
from .stats import Measured, measured
from .targets import targets

METRICS = (("p50", "p50 ms"), ("p99", "p99 ms"), ("ops", "ops/s"), ("cpu", "CPU ms/call"))


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def report(
    keys: list[str],
    samples: Measured,
    args: argparse.Namespace,
    floor: float,
    agent_note: str,
    agent_cpu: str,
    seconds: float,
    version: dict[str, float] | None = None,
) -> str:
    """The markdown to paste into the README: header, table, notes, the agent targets."""
    ours = [k for k in keys if k != "ref"]
    plan = ", ".join(f"{pods} pods at {level}" for level, pods in args.plan)
    head = ["at once", "op", "metric"]
    if "ref" in keys:
        head.append("reference")
    for key in ours:
        head.append(TITLES[key])
        if "ref" in keys:
            head.append(f"{TITLES[key]}/ref")
    lines = [
        f"**{dt.date.today().isoformat()}**, {machine()}",
        "",
        f"{versions(args.plugin)}. Config: bridge, isGateway, host-local /20, cniVersion "
        f"{CNI_VERSION}; every call a fresh exec from a thread pool; {args.rounds} round(s) "
        f"alternating the modes, {plan} per round and mode. Run time {seconds:.0f} s.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if i not in (1, 2) else "---" for i in range(len(head))) + "|",
    ]
    for level in args.levels:
        for verb in ("ADD", "DEL"):
            for metric, label in METRICS:
                row = [str(level), verb, label]
                ref_value = measured(samples, "ref", level, verb, metric)
                if "ref" in keys:
                    row.append(fmt(ref_value))
                for key in ours:
                    value = measured(samples, key, level, verb, metric)
                    row.append(fmt(value))
                    if "ref" in keys:
                        row.append(fmt(value / ref_value) + "x" if value == value else "n/a")
                lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Ratios are ours/reference: below 1x is better for latency (ms) and CPU, above 1x for "
        "throughput (calls completed / batch wall time). CPU ms/call: user + system time of "
        "every process a call involves (the exec'd plugin and what it runs, from the bench's "
        "reaped-children usage; the agent, from /proc, including the veth deletions it does "
        f"after answering). Exec'ing /bin/true the same way costs {floor:.2f} ms (p50, one at a "
        f"time){agent_cpu}.",
    ]
    if agent_note:
        lines += ["", f"**{agent_note}**"]
    lines += targets(samples, version)
    return "\n".join(lines)
