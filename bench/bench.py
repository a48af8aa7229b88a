"""loxi-cni against the reference Go bridge plugin: ADD/DEL latency and throughput, leaks, RSS.

One run alternates rounds of three modes on the same machine and the same kind of config
(isGateway, host-local subnet), each with its own bridge, network name, subnet and dataDir:

* ``reference``: Debian's containernetworking-plugins bridge + host-local (cniVersion 1.0.0);
* ``agent``: loxi-cni with a node agent (``loxi-cni agent --socket``) we start ourselves;
* ``standalone``: loxi-cni with LOXI_CNI_SOCKET naming a path where nothing listens.

Every call is a fresh exec of the plugin with the CNI env and the config on stdin, as a runtime
does it (a thread pool, one subprocess per call, wall time measured around the exec). Pods are
network namespaces made before any timing. Modes rotate round by round so that drift (other load,
page cache, thermal) hits all of them alike; ratios from one run are what to compare, never
absolute times across runs (../shared/design/FACTS.md).

Usage (as root; ``make bench`` runs the default)::

    bench.py [--quick] [--rounds N] [--levels 1,8,32] [--pods 16,32,64]
             [--modes ref,agent,standalone]
    bench.py --cycles 1000 [--parallel 4] [--via agent|standalone]
    bench.py --rss 500 [--parallel 4]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGIN = "/opt/cni/bin/loxi-cni"
REFERENCE_DIR = "/usr/lib/cni"
CNI_VERSION = "1.0.0"  # the newest the Debian reference (1.1.1) speaks; ours speaks it too
IFNAME = "eth0"
CALL_TIMEOUT = 60.0
AGENT_START_TIMEOUT = 20.0
# Subnets far from anything the tests use (10.99.0.0/24); /20 holds --rss up to ~4000 pods.
SUBNETS = {"ref": "10.252.0.0/20", "agent": "10.252.16.0/20", "standalone": "10.252.32.0/20"}
TITLES = {"ref": "reference", "agent": "agent", "standalone": "standalone"}
# A Python agent cannot serve a request (recv, parse, netlink, reply) in under this much CPU; an
# agent that used less than this per request since warm-up was bypassed (the client fell back).
AGENT_MIN_CPU_PER_CALL = 0.0001
# The host's own loxi-cni dirs (default LOXI_CNI_RUN_DIR, LOXI_CNI_STATE_DIR): we use private
# ones, and check at the end that nothing of ours landed here.
HOST_DIRS = ("/run/loxi-cni", "/var/lib/loxi-cni")


class BenchError(Exception):
    """A check failed: the numbers would be meaningless, so the run stops loudly."""


class AgentUnavailable(Exception):
    """``loxi-cni agent`` could not be started (e.g. not written yet)."""


# --- system helpers ------------------------------------------------------------------------


def sh(*cmd: str, stdin: bytes | None = None, check: bool = True) -> str:
    """Run a setup/check command (never timed); its failure is a bench failure."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=120)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.decode().strip()}")
    return proc.stdout.decode()


def links() -> list[dict[str, Any]]:
    return list(json.loads(sh("ip", "-j", "link", "show") or "[]"))


def bridge_ports(bridge: str) -> list[str]:
    """Host interfaces enslaved to ``bridge`` (a leftover veth shows up here)."""
    return [link["ifname"] for link in links() if link.get("master") == bridge]


def make_netns(names: Sequence[str]) -> None:
    if names:
        sh("ip", "-batch", "-", stdin="".join(f"netns add {n}\n" for n in names).encode())


def delete_netns(names: Sequence[str]) -> None:
    if names:
        sh(
            "ip",
            "-force",
            "-batch",
            "-",
            stdin="".join(f"netns del {n}\n" for n in names).encode(),
            check=False,
        )


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores (nproc), kernel {platform.release()}, {cpu}"


def versions(plugin: str) -> str:
    ref = sh("dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins", check=False)
    ours = sh(plugin, "version", check=False).strip() or "loxi-cni (version unknown)"
    return (
        f"reference: Debian containernetworking-plugins {ref or '?'} (bridge, host-local); {ours}"
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


# --- the agent -----------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                out += [int(child), *_descendants(int(child))]
    return out


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    """utime + stime + reaped children's, of the whole thread group."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return 0.0


class Agent:
    """Our own ``loxi-cni agent`` on a private socket, so the host's agent (if any) is untouched."""

    def __init__(self, plugin: str, sock: Path, env: dict[str, str], log: Path) -> None:
        self.plugin, self.sock, self.env, self.log = plugin, sock, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [self.plugin, "agent", "--socket", str(self.sock)]
        # Metrics off when the agent has them: the counters still run, but a fixed TCP port
        # would collide with a host agent or another bench run.
        agent_help = subprocess.run([*cmd, "--help"], capture_output=True, env=self.env).stdout
        if b"--metrics" in agent_help:
            cmd += ["--metrics", "off"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                raise AgentUnavailable(f"`loxi-cni agent` exited with code {code}: {tail}")
            if self.sock.is_socket() and (self.served() is not None or self._connects()):
                return
            time.sleep(0.05)
        self.stop()
        raise AgentUnavailable(
            f"no listener on {self.sock} after {AGENT_START_TIMEOUT:.0f} s: {self.log_tail()}"
        )

    def _connects(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.sock))
                return True
            except OSError:
                return False

    def served(self) -> int | None:
        """Requests served, from ``loxi-cni status --json``; None if it does not tell."""
        proc = subprocess.run(
            [self.plugin, "status", "--socket", str(self.sock), "--json"],
            capture_output=True,
            env=self.env,
            timeout=CALL_TIMEOUT,
        )
        try:
            return int(json.loads(proc.stdout)["requestsServed"])
        except (ValueError, KeyError, TypeError):
            return None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").strip().splitlines()[-lines:]
            return " | ".join(text) or "(no output)"
        return "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"the agent died (exit {code}): {self.log_tail()}")

    def pids(self) -> list[int]:
        return [self.pid, *_descendants(self.pid)]

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(p) for p in self.pids())

    def rss_kib(self) -> tuple[int, int]:
        """VmRSS of the agent process, and of it plus its descendants (workers, if any)."""
        return _status_kib(self.pid, "VmRSS"), sum(_status_kib(p, "VmRSS") for p in self.pids())

    def fds(self) -> int:
        return sum(len(os.listdir(f"/proc/{p}/fd")) for p in self.pids())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            print(f"WARNING: the agent ignored SIGTERM for 10 s; killed. {self.log_tail()}")
            self.proc.kill()
            self.proc.wait()


# --- modes, pods, calls --------------------------------------------------------------------


@dataclass
class Mode:
    """One plugin set-up: its own bridge, network, subnet, dataDir (and run dir for ours)."""

    key: str
    plugin: str
    cni_path: str
    network: str
    bridge: str
    subnet: ipaddress.IPv4Network
    data_dir: Path
    private_dirs: list[Path] = field(default_factory=list)  # ours: run dir, state dir
    extra_env: dict[str, str] = field(default_factory=dict)
    agent: Agent | None = None
    baseline: set[Path] = field(default_factory=set)  # files in private_dirs after warm-up
    requests: int = 0  # sent to the agent since warm-up
    agent_cpu0: float = 0.0
    served0: int | None = None

    @property
    def title(self) -> str:
        return TITLES[self.key]

    def conf(self) -> dict[str, Any]:
        return {
            "cniVersion": CNI_VERSION,
            "name": self.network,
            "type": "bridge" if self.key == "ref" else "loxi-cni",
            "bridge": self.bridge,
            "isGateway": True,
            "ipam": {
                "type": "host-local",
                "subnet": str(self.subnet),
                "dataDir": str(self.data_dir),
            },
        }


@dataclass
class Attachment:
    netns: str
    cid: str
    pod_uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    result: dict[str, Any] | None = None


@dataclass
class Call:
    seconds: float
    rc: int
    stdout: bytes
    stderr: bytes


def exec_plugin(mode: Mode, command: str, att: Attachment, stdin: bytes) -> Call:
    """One CNI call exactly as a runtime (containerd's CRI) makes it; wall time around the exec."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": att.cid,
        "CNI_NETNS": f"/var/run/netns/{att.netns}",
        "CNI_IFNAME": IFNAME,
        "CNI_PATH": mode.cni_path,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={att.netns};"
        f"K8S_POD_INFRA_CONTAINER_ID={att.cid};K8S_POD_UID={att.pod_uid}",
        **mode.extra_env,
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [mode.plugin], input=stdin, env=env, capture_output=True, timeout=CALL_TIMEOUT
    )
    return Call(time.perf_counter() - start, proc.returncode, proc.stdout, proc.stderr)


def _describe(mode: Mode, command: str, att: Attachment, call: Call, why: str) -> str:
    out = call.stdout.decode(errors="replace").strip()[:300]
    err = call.stderr.decode(errors="replace").strip()[-300:]
    return f"{mode.title} {command} {att.cid}: {why} (exit {call.rc}) stdout={out!r} stderr={err!r}"


def batch(
    mode: Mode, command: str, atts: Sequence[Attachment], concurrency: int
) -> tuple[list[float], float]:
    """Run one verb for every attachment, ``concurrency`` at a time: (latencies, wall time).

    ADD results are kept for DEL's prevResult (libcni sends the cached result, so do we).
    """
    base = mode.conf()
    stdins: list[bytes] = []
    for att in atts:
        conf = base if command == "ADD" else {**base, "prevResult": att.result}
        stdins.append(json.dumps(conf).encode())
    if mode.agent:
        mode.agent.check_alive()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        start = time.perf_counter()
        futures = [
            pool.submit(exec_plugin, mode, command, a, s) for a, s in zip(atts, stdins, strict=True)
        ]
        calls = [f.result() for f in futures]
        wall = time.perf_counter() - start
    failures: list[str] = []
    seen: dict[str, str] = {}
    for att, call in zip(atts, calls, strict=True):
        if call.rc != 0:
            failures.append(_describe(mode, command, att, call, "failed"))
        elif command == "ADD":
            try:
                att.result = json.loads(call.stdout)
                address = ipaddress.ip_interface(att.result["ips"][0]["address"])
            except (ValueError, KeyError, IndexError, TypeError) as err:
                failures.append(_describe(mode, command, att, call, f"bad result: {err}"))
                continue
            if address.ip not in mode.subnet:
                failures.append(_describe(mode, command, att, call, f"{address} not in subnet"))
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
    return [c.seconds for c in calls], wall


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


def leftovers(mode: Mode) -> list[str]:
    """What a complete DEL of every attachment must not leave: reservations, index entries or
    other files in the dataDir, ports on the bridge, our veths anywhere, files in our run dir."""
    found: list[str] = []
    net_dir = mode.data_dir / mode.network
    for path in sorted(mode.data_dir.rglob("*")):
        if path.is_dir():
            continue
        if path.parent == net_dir and (
            path.name == "lock" or path.name.startswith("last_reserved_ip.")
        ):
            continue
        found.append(f"file {path}")
    found += [f"veth {p} on bridge {mode.bridge}" for p in bridge_ports(mode.bridge)]
    mark = f"loxi-cni {mode.network} "
    found += [
        f"veth {link['ifname']} (alias {link['ifalias']!r})"
        for link in links()
        if str(link.get("ifalias", "")).startswith(mark) and link.get("master") != mode.bridge
    ]
    found += [f"file {p}" for p in private_files(mode) - mode.baseline]
    return found


def private_files(mode: Mode) -> set[Path]:
    """Regular files in our run and state dirs (sockets excluded: the agent's own is expected)."""
    return {p for d in mode.private_dirs for p in d.rglob("*") if p.is_file()}


def check_clean(mode: Mode, when: str) -> None:
    found = leftovers(mode)
    if found:
        raise BenchError(
            f"{mode.title}: after {when}, {len(found)} thing(s) left behind:\n  "
            + "\n  ".join(found[:10])
        )


def check_host_dirs(bench: Bench) -> None:
    """Nothing of ours in the host's loxi-cni dirs: the plugin must have honoured our private
    LOXI_CNI_RUN_DIR / LOXI_CNI_STATE_DIR (names there are sha256(network, container, ifname))."""
    keys = {
        hashlib.sha256(f"{net}\0{cid}\0{IFNAME}".encode()).hexdigest()[:32]
        for net, cid in bench.made
    }
    ours = [
        path
        for top in HOST_DIRS
        for path in Path(top).rglob("*")
        if path.name.lstrip(".").split(".")[0] in keys
    ]
    if ours:
        raise BenchError(
            f"{len(ours)} file(s) of this run in the host's dirs: " + ", ".join(map(str, ours[:5]))
        )


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
        if key == "ref":
            mode = Mode(
                key,
                f"{self.reference_dir}/bridge",
                self.reference_dir,
                f"bench-{short}-{self.tag}",
                f"bnch{short}{self.tag}",
                ipaddress.IPv4Network(SUBNETS[key]),
                data,
            )
        else:
            # Private run (locks, socket) and state (attachment records) dirs: the agent
            # reconciles every record it finds at start, so it must never see the host's.
            run, state = self.work / f"run-{key}", self.work / f"state-{key}"
            run.mkdir(mode=0o700)
            state.mkdir(mode=0o700)
            env = {"LOXI_CNI_RUN_DIR": str(run), "LOXI_CNI_STATE_DIR": str(state)}
            mode = Mode(
                key,
                self.plugin,
                f"{Path(self.plugin).parent}:{self.reference_dir}",
                f"bench-{short}-{self.tag}",
                f"bnch{short}{self.tag}",
                ipaddress.IPv4Network(SUBNETS[key]),
                data,
                [run, state],
                {"LOXI_CNI_SOCKET": str(run / "agent.sock"), **env},
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
        check_host_dirs(bench)
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


# --- the comparison ------------------------------------------------------------------------


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    calls: int = 0
    wall: float = 0.0

    def add(self, latencies: list[float], wall: float) -> None:
        self.latencies += latencies
        self.calls += len(latencies)
        self.wall += wall

    def metric(self, name: str) -> float:
        if name == "p50":
            return percentile(self.latencies, 50) * 1000
        if name == "p99":
            return percentile(self.latencies, 99) * 1000
        return self.calls / self.wall if self.wall else float("nan")


def harness_floor(pods: int = 20) -> float:
    """p50 of exec'ing /bin/true the same way: the part of every number that is not the plugin."""
    times = []
    for _ in range(pods):
        start = time.perf_counter()
        subprocess.run(["/bin/true"], input=b"{}", capture_output=True, env={"CNI_COMMAND": "ADD"})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def compare(args: argparse.Namespace) -> int:
    keys = [k for k in ("ref", "agent", "standalone") if k in args.modes]
    require_root_and_binaries(args, "ref" in keys)
    agent_note = ""
    started = time.monotonic()
    samples: dict[tuple[str, int, str], Samples] = {}
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
                order = modes[rnd % len(modes) :] + modes[: rnd % len(modes)]
                for mode in order:
                    atts = bench.attachments(mode, netns)
                    for verb in ("ADD", "DEL"):
                        lat, wall = batch(mode, verb, atts, level)
                        samples.setdefault((mode.key, level, verb), Samples()).add(lat, wall)
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
    print()
    print(report(keys, samples, args, floor, agent_note, agent_cpu, time.monotonic() - started))
    return 0


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def report(
    keys: list[str],
    samples: dict[tuple[str, int, str], Samples],
    args: argparse.Namespace,
    floor: float,
    agent_note: str,
    agent_cpu: str,
    seconds: float,
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
            for metric, label in (("p50", "p50 ms"), ("p99", "p99 ms"), ("ops", "ops/s")):
                row = [str(level), verb, label]
                ref = samples.get(("ref", level, verb))
                ref_value = ref.metric(metric) if ref else float("nan")
                if "ref" in keys:
                    row.append(_fmt(ref_value))
                for key in ours:
                    got = samples.get((key, level, verb))
                    value = got.metric(metric) if got else float("nan")
                    row.append(_fmt(value))
                    if "ref" in keys:
                        row.append(_fmt(value / ref_value) + "x" if value == value else "n/a")
                lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Ratios are ours/reference: below 1x is better for latency (ms), above 1x for "
        f"throughput (calls completed / batch wall time). Exec'ing /bin/true the same way costs "
        f"{floor:.2f} ms (p50, one at a time){agent_cpu}.",
    ]
    if agent_note:
        lines += ["", f"**{agent_note}**"]
    lines += targets(samples)
    return "\n".join(lines)


def targets(samples: dict[tuple[str, int, str], Samples]) -> list[str]:
    """The issue's speed targets, checked where this run measured them."""

    def m(key: str, level: int, verb: str, metric: str) -> float:
        got = samples.get((key, level, verb))
        return got.metric(metric) if got else float("nan")

    checks: list[tuple[str, Callable[[], float], float, bool]] = [
        (
            "agent ADD p50 at 1",
            lambda: m("agent", 1, "ADD", "p50") / m("ref", 1, "ADD", "p50"),
            1.0,
            True,
        ),
        (
            "agent DEL p50 at 1",
            lambda: m("agent", 1, "DEL", "p50") / m("ref", 1, "DEL", "p50"),
            0.5,
            True,
        ),
        (
            "agent ADD ops/s at 8",
            lambda: m("agent", 8, "ADD", "ops") / m("ref", 8, "ADD", "ops"),
            2.0,
            False,
        ),
        (
            "agent DEL ops/s at 8",
            lambda: m("agent", 8, "DEL", "ops") / m("ref", 8, "DEL", "ops"),
            2.0,
            False,
        ),
        (
            "agent ADD p99 at 8",
            lambda: m("agent", 8, "ADD", "p99") / m("ref", 8, "ADD", "p99"),
            1.0,
            True,
        ),
        (
            "standalone ADD p50 at 1",
            lambda: m("standalone", 1, "ADD", "p50") / m("ref", 1, "ADD", "p50"),
            3.0,
            True,
        ),
    ]
    out = ["", "Targets (issue 4), ours/reference:", ""]
    for name, ratio, limit, at_most in checks:
        value = ratio()
        if value != value:
            verdict = "not measured"
        else:
            met = value <= limit if at_most else value >= limit
            verdict = f"{value:.2f}x, {'met' if met else 'MISSED'}"
        out.append(f"- {name} {'<=' if at_most else '>='} {limit}x: {verdict}")
    return out


# --- cycles and RSS ------------------------------------------------------------------------


def agent_mode(bench: Bench, via: str = "agent") -> Mode:
    mode = bench.mode(via)
    if via == "agent":
        try:
            bench.start_agent(mode)
        except AgentUnavailable as err:
            raise BenchError(f"this check needs the agent: {err}") from err
    bench.warm_up(mode)
    return mode


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
        hwm = _status_kib(mode.agent.pid, "VmHWM")
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


# --- command line --------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
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


if __name__ == "__main__":
    sys.exit(main())
