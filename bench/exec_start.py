"""Exec-to-exit time of a CNI VERSION call, for each executable given, side by side.

A runtime (podman) sends VERSION before every ADD and DEL, so this is the plugin's fixed cost.
Each call is a fresh posix_spawn with CNI_COMMAND=VERSION and a config on stdin, timed from
spawn to reaped exit. The executables take turns call by call, so load from elsewhere hits all
of them alike; compare the medians of one run, never across runs.

    bench/exec_start.py [--runs N] [--env K=V ...] EXECUTABLE...
    bench/exec_start.py /opt/cni/bin/loxi-cni /usr/lib/cni/bridge
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence


def spawn_and_wait(path: str, env: dict[str, str], stdin: str) -> float:
    start = time.perf_counter()
    pid = os.posix_spawn(
        path,
        [path],
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, stdin, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        ],
    )
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{path}: VERSION failed ({status})")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("executables", nargs="+")
    p.add_argument("--runs", type=int, default=500, help="timed calls per executable")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--env", action="append", default=[], help="extra K=V for every call")
    args = p.parse_args(argv)
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION"}
    env.update(kv.split("=", 1) for kv in args.env)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as config:
        config.write('{"cniVersion":"1.0.0","name":"bench","type":"bridge"}')
        config.flush()
        times: dict[str, list[float]] = {path: [] for path in args.executables}
        for i in range(args.warmup + args.runs):
            for path in args.executables:
                elapsed = spawn_and_wait(path, env, config.name)
                if i >= args.warmup:
                    times[path].append(elapsed)
    print(f"{'executable':<40} {'p50 ms':>8} {'p10 ms':>8} {'p90 ms':>8}  ({args.runs} runs)")
    for path, samples in times.items():
        q = statistics.quantiles(samples, n=10)
        p50 = statistics.median(samples)
        print(f"{path:<40} {p50 * 1e3:8.3f} {q[0] * 1e3:8.3f} {q[-1] * 1e3:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
