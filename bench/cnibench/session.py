"""One run's resources: every namespace, bridge, directory and agent it makes, torn down."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from .agent import Agent
from .batches import batch
from .calls import Attachment
from .errors import AgentUnavailable, BenchError
from .host import delete_netns, make_netns, sh
from .leaks import check_clean, check_host_dirs, private_files
from .modes import Mode
from .settings import SUBNETS


class Bench:
    """Owns every namespace, bridge, directory and agent it makes, and removes them all."""

    def __init__(self, plugin: str, reference_dir: str) -> None:
        self.plugin = plugin
        self.reference_dir = reference_dir
        self.tag = uuid.uuid4().hex[:6]
        self.work = Path(tempfile.mkdtemp(prefix=f"loxi-cni-bench-{self.tag}-", dir="/var/tmp"))
        self.netns: list[str] = []
        self.modes: dict[str, Mode] = {}
        self.serial = 0
        self.made: set[tuple[str, str]] = set()  # (network, container ID) of every attachment

    def mode(self, key: str) -> Mode:
        """Set a mode up (not its agent): names, directories, environment."""
        short = {"ref": "ref", "agent": "agt", "standalone": "alo"}[key]
        data = self.work / f"data-{key}"
        data.mkdir()
        plugin, cni_path = f"{self.reference_dir}/bridge", self.reference_dir
        private_dirs: list[Path] = []
        env: dict[str, str] = {}
        if key != "ref":
            # Private run (locks, socket) and state (attachment records) dirs: the agent
            # reconciles every record it finds at start, so it must never see the host's.
            run, state = self.work / f"run-{key}", self.work / f"state-{key}"
            run.mkdir(mode=0o700)
            state.mkdir(mode=0o700)
            plugin, cni_path = self.plugin, f"{Path(self.plugin).parent}:{self.reference_dir}"
            private_dirs = [run, state]
            env = {
                "LOXI_CNI_SOCKET": str(run / "agent.sock"),
                "LOXI_CNI_RUN_DIR": str(run),
                "LOXI_CNI_STATE_DIR": str(state),
            }
        mode = Mode(
            key,
            plugin,
            cni_path,
            f"bench-{short}-{self.tag}",
            f"bnch{short}{self.tag}",
            ipaddress.IPv4Network(SUBNETS[key]),
            data,
            private_dirs,
            env,
        )
        self.modes[key] = mode
        return mode

    def start_agent(self, mode: Mode) -> None:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        env |= {k: v for k, v in mode.extra_env.items() if k != "LOXI_CNI_SOCKET"}
        mode.agent = Agent(
            self.plugin, Path(mode.extra_env["LOXI_CNI_SOCKET"]), env, self.work / "agent.log"
        )
        mode.agent.start()

    def pods(self, count: int) -> list[str]:
        """At least ``count`` namespaces (made now, untimed, reused by every mode and round)."""
        missing = [f"bnch-{self.tag}-{i}" for i in range(len(self.netns), count)]
        make_netns(missing)
        self.netns += missing
        return self.netns[:count]

    def attachments(self, mode: Mode, netns: Sequence[str]) -> list[Attachment]:
        self.serial += 1
        atts = [
            Attachment(ns, f"{mode.key}{self.tag}s{self.serial}p{i}") for i, ns in enumerate(netns)
        ]
        self.made.update((mode.network, a.cid) for a in atts)
        return atts

    def warm_up(self, mode: Mode) -> None:
        """One untimed ADD+DEL: creates the bridge, fills caches, loads the agent's code."""
        atts = self.attachments(mode, self.pods(1))
        batch(mode, "ADD", atts, 1)
        batch(mode, "DEL", atts, 1)
        check_clean(mode, "warm-up")
        mode.baseline = private_files(mode)
        if mode.agent:
            mode.requests = 0
            mode.agent_cpu0 = mode.agent.cpu_seconds()
            mode.served0 = mode.agent.served()

    def close(self, keep: bool) -> None:
        for mode in self.modes.values():
            if mode.agent:
                mode.agent.stop()
        delete_netns(self.netns)
        for mode in self.modes.values():
            sh("ip", "link", "del", mode.bridge, check=False)
        if keep:
            print(f"kept for inspection: {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


@contextlib.contextmanager
def bench_session(args: argparse.Namespace) -> Iterator[Bench]:
    """A Bench torn down on success, failure, Ctrl-C or SIGTERM (work dir kept on failure)."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args.plugin, args.reference_dir)
    ok = False
    try:
        yield bench
        check_host_dirs(bench.made)
        ok = True
    finally:
        bench.close(keep=not ok)


def require_root_and_binaries(args: argparse.Namespace, need_ref: bool) -> None:
    if os.geteuid() != 0:
        sys.exit("bench.py needs root (network namespaces, bridges)")
    if not os.access(args.plugin, os.X_OK):
        sys.exit(f"{args.plugin} is not installed: run `make install` (make bench does)")
    for name in ("bridge", "host-local") if need_ref else ():
        if not os.access(f"{args.reference_dir}/{name}", os.X_OK):
            sys.exit(f"{args.reference_dir}/{name} missing: install containernetworking-plugins")


def agent_mode(bench: Bench, via: str = "agent") -> Mode:
    """A warmed-up mode of ours for the checks that go through one (cycles, RSS)."""
    mode = bench.mode(via)
    if via == "agent":
        try:
            bench.start_agent(mode)
        except AgentUnavailable as err:
            raise BenchError(f"this check needs the agent: {err}") from err
    bench.warm_up(mode)
    return mode
