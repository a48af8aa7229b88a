"""A verb for many pods at once, with every answer checked: distinct addresses, all served."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .calls import Attachment, describe, exec_plugin
from .errors import BenchError
from .modes import Mode
from .probes import children_cpu_seconds
from .settings import AGENT_MIN_CPU_PER_CALL


def batch(
    mode: Mode, command: str, atts: Sequence[Attachment], concurrency: int
) -> tuple[list[float], float, float]:
    """Run one verb for every attachment, ``concurrency`` at a time: (latencies, wall time,
    CPU seconds of every process involved: the execs, what they ran, and the agent).

    ADD results are kept for DEL's prevResult (libcni sends the cached result, so do we). The
    modes never run at the same time, so the CPU counted around the batch is all its own.
    """
    base = mode.conf()
    stdins: list[bytes] = []
    for att in atts:
        conf = base if command == "ADD" else {**base, "prevResult": att.result}
        stdins.append(json.dumps(conf).encode())
    if mode.agent:
        mode.agent.check_alive()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        cpu0 = children_cpu_seconds() + (mode.agent.cpu_seconds() if mode.agent else 0.0)
        start = time.perf_counter()
        futures = [
            pool.submit(exec_plugin, mode, command, a, s) for a, s in zip(atts, stdins, strict=True)
        ]
        calls = [f.result() for f in futures]
        wall = time.perf_counter() - start
        if mode.agent and command == "DEL":
            time.sleep(0.2)  # the agent deletes veths after answering: count that work too
        cpu = children_cpu_seconds() + (mode.agent.cpu_seconds() if mode.agent else 0.0) - cpu0
    failures: list[str] = []
    seen: dict[str, str] = {}
    for att, call in zip(atts, calls, strict=True):
        if call.rc != 0:
            failures.append(describe(mode, command, att, call, "failed"))
        elif command == "ADD":
            try:
                att.result = json.loads(call.stdout)
                address = ipaddress.ip_interface(att.result["ips"][0]["address"])
            except (ValueError, KeyError, IndexError, TypeError) as err:
                failures.append(describe(mode, command, att, call, f"bad result: {err}"))
                continue
            if address.ip not in mode.subnet:
                failures.append(describe(mode, command, att, call, f"{address} not in subnet"))
            if str(address.ip) in seen:
                failures.append(
                    f"{mode.title}: {address.ip} given to {seen[str(address.ip)]} and {att.cid}"
                )
            seen[str(address.ip)] = att.cid
    if failures:
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        raise BenchError(
            f"{len(failures)} of {len(atts)} {command} calls failed{more}:\n  "
            + "\n  ".join(failures[:3])
        )
    if mode.agent:
        mode.agent.check_alive()
        mode.requests += len(atts)
        check_agent_served(mode)
    return [c.seconds for c in calls], wall, cpu


def check_agent_served(mode: Mode) -> None:
    """Fail if the calls did not all reach the agent (the client fell back to in-process).

    Exact from the agent's own count when ``loxi-cni status`` gives one, else judged from the
    agent's CPU time.
    """
    assert mode.agent is not None
    if mode.served0 is not None:
        served = mode.agent.served()
        if served is None or served - mode.served0 < mode.requests:
            raise BenchError(
                f"agent mode: the agent served {served} - {mode.served0} requests of the "
                f"{mode.requests} sent since warm-up: the client fell back to in-process"
            )
        return
    used = mode.agent.cpu_seconds() - mode.agent_cpu0
    if mode.requests >= 50 and used < mode.requests * AGENT_MIN_CPU_PER_CALL:
        raise BenchError(
            f"agent mode: the agent used {used * 1000:.1f} ms CPU for {mode.requests} requests: "
            "the calls did not reach it (did the client fall back to in-process?)"
        )
