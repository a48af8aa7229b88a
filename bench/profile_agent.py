"""Where the agent's time goes on one ADD and one DEL: the CPU of the serving thread per call
(``time.thread_time``, no profiler running) and the top entries of a cProfile of the same
calls, made through ``AgentServer.serve_cni``, the function a worker runs for each request.

Each pod is a fresh network namespace handed over as an fd, as the shim does; the host veth is
deleted by the agent's reaper thread after DEL answers, outside what is measured here (the
README's Speed section says why). Everything is made in a private state, run and data dir
and a bridge of its own, and removed at the end. As in the agent, the store's reservations
are kept in memory (``store.enable_cache``) and every request logs a line.

Usage (as root)::

    profile_agent.py [--pods 60] [--present 100] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BRIDGE = "lxprof0"
NETWORK = "loxi-profile"


def _config(data_dir: Path) -> bytes:
    return json.dumps({
        "cniVersion": "1.0.0", "name": NETWORK, "type": "loxi-cni", "bridge": BRIDGE,
        "isGateway": True,
        "ipam": {"type": "host-local", "subnet": "10.231.0.0/20", "dataDir": str(data_dir)},
    }).encode()  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=60, help="ADDs (then DELs) measured")
    ap.add_argument("--present", type=int, default=100, help="pods attached before measuring")
    ap.add_argument("--top", type=int, default=25, help="cProfile entries shown")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loxi-profile-"))
    os.environ["LOXI_CNI_STATE_DIR"] = str(tmp / "state")
    os.environ["LOXI_CNI_RUN_DIR"] = str(tmp / "run")
    from loxicni.agent.metrics import Metrics
    from loxicni.agent.server import AgentServer, AgentState
    from loxicni.ipam import store

    # As the agent runs: the store's view kept in memory, a log line per request (to nowhere).
    store.enable_cache()
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
    server = AgentServer(str(tmp / "run" / "agent.sock"), AgentState(Metrics(), "profile"))
    stdin = _config(tmp / "ipam")
    names = [f"lxprof-{i}" for i in range(args.present + args.pods)]
    fds: dict[str, int] = {}

    def call(command: str, name: str) -> float:
        env = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": name, "CNI_NETNS": f"/var/run/netns/{name}",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
        }  # fmt: skip
        start = time.thread_time()
        code, out = server.serve_cni(env, stdin, fds[name])
        used = time.thread_time() - start
        if code != 0:
            raise SystemExit(f"{command} {name} failed: {out.decode()}")
        return used

    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            fds[name] = os.open(f"/var/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        for name in names[: args.present]:
            call("ADD", name)
        measured = names[args.present :]
        half = len(measured) // 2
        cpu: dict[str, list[float]] = {"ADD": [], "DEL": []}
        for name in measured[:half]:  # no profiler: the real cost
            cpu["ADD"].append(call("ADD", name))
        for name in measured[:half]:
            cpu["DEL"].append(call("DEL", name))
        profiles = {"ADD": cProfile.Profile(), "DEL": cProfile.Profile()}
        for command in ("ADD", "DEL"):  # the other half under the profiler
            for name in measured[half:]:
                profiles[command].enable()
                call(command, name)
                profiles[command].disable()
        print(
            f"{args.present} pods present; serving thread CPU per call (thread_time, "
            f"{half} calls each, no profiler):"
        )
        for command, times in cpu.items():
            print(f"  {command}: p50 {1000 * statistics.median(times):.2f} ms")
        for command, profile in profiles.items():
            text = io.StringIO()
            stats = pstats.Stats(profile, stream=text).strip_dirs().sort_stats("cumulative")
            stats.print_stats(args.top)
            print(f"\ncProfile of {len(measured) - half} {command}s (cumulative):")
            print(text.getvalue())
    finally:
        for name in names:
            if name in fds:
                try:
                    call("DEL", name)
                except SystemExit as exc:
                    print(exc, file=sys.stderr)
                os.close(fds[name])
            subprocess.run(["ip", "netns", "del", name], check=False)
        deadline = time.monotonic() + 30
        while server.reaper.pending() and time.monotonic() < deadline:
            time.sleep(0.05)  # the retired veths, deleted in the background
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
