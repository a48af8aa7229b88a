"""The chaos run's private node: its state on a small tmpfs, its agent, and what it holds.

Everything carries a random tag (network, bridge, veth prefix, netns names, subnets, mount
point), so runs can share the machine with other tests; ``cleanup`` removes all of it.

The state the plugin keeps (see loxicni/base/paths.py, loxicni/plugin/records.py,
loxicni/ipam/store.py): records in ``<state>/attachments``, locks in ``<run>/locks``, the
host-local store in ``<dataDir>/<network>/`` with our index in ``<dataDir>/.loxi-cni/<network>/``,
host veths named ``<vethPrefix><hash>`` and labelled by their alias, masquerade elements in
``table inet loxi-cni`` tagged ``<network> <containerID> <ifname>``. ``inspect`` reads all of it
back independently of the plugin's own code (only the nft syntax of an element is shared), and
``verify`` compares it with the pods the runtimes believe are up.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from loxicni.net.nft import element_text

PLUGIN = os.environ.get("LOXI_CNI_BIN", "/opt/cni/bin/loxi-cni")
TMPFS_SIZE = "8m"  # a few hundred records and reservations; small enough to fill at once
IFNAME = "eth0"
RECORD_DIR = "attachments"
INDEX_DIR = ".loxi-cni"
STORE_FILES = ("lock",)  # the store's own files, besides last_reserved_ip.<n>
NFT_SETS = ("pods4", "local4", "pods6", "local6")


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


@dataclass(frozen=True)
class PodView:
    """A pod a runtime believes is up: its sandbox and the result its ADD answered."""

    container_id: str
    netns: str  # the name under /var/run/netns
    result: dict[str, Any]

    def ips(self) -> list[tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, str]]:
        """(address, gateway) of the pod interface, from the ADD result."""
        pod_index = next(i for i, itf in enumerate(self.result["interfaces"]) if itf.get("sandbox"))
        return [
            (ipaddress.ip_interface(ip["address"]), ip.get("gateway", ""))
            for ip in self.result["ips"]
            if ip.get("interface") == pod_index
        ]

    @property
    def host_veth(self) -> str:
        return str(self.result["interfaces"][1]["name"])


@dataclass
class Holdings:
    """Everything of the network the node holds, read back from disk, kernel and nftables."""

    reservations: dict[str, str] = field(default_factory=dict)  # address -> file content
    index: dict[str, tuple[str, str]] = field(default_factory=dict)  # file -> (cid, ifname)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> JSON
    locks: set[str] = field(default_factory=set)  # attachment keys
    temps: list[str] = field(default_factory=list)  # temporary files anywhere in the state
    strays: list[str] = field(default_factory=list)  # files that should not exist at all
    veths: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> attributes
    ports: set[str] = field(default_factory=set)  # links enslaved to the bridge
    nft: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # cid -> (set, key)


class Node:
    def __init__(self, plugin: str = PLUGIN, tag: str | None = None) -> None:
        self.plugin = plugin
        self.tag = tag or os.urandom(3).hex()
        self.root = Path(f"/tmp/loxi-chaos-{self.tag}")
        self.var = self.root / "var"  # the tmpfs: what a reboot keeps
        self.state_dir = self.var / "state"
        self.data_dir = self.var / "ipam"
        self.run_dir = self.root / "run"  # what a reboot empties
        self.socket = self.run_dir / "agent.sock"
        self.agent_faults = self.root / "faults-agent"
        self.plugin_faults = self.root / "faults-plugin"
        self.agent_log = self.root / "agent.log"
        self.network = f"loxichaos-{self.tag}"
        self.bridge = f"lxch{self.tag}"
        self.veth_prefix = f"lc{self.tag}"  # 8 characters, the most vethPrefix allows
        self.netns_prefix = f"lxch-{self.tag}-"
        a, b, c = (int(self.tag[i : i + 2], 16) for i in (0, 2, 4))
        self.subnet4 = ipaddress.ip_network(f"10.{200 + a % 50}.{b}.0/24")
        self.subnet6 = ipaddress.ip_network(f"fd{a:02x}:{b:02x}{c:02x}:c4a0::/64")
        self.mounted = False
        self.keys: dict[str, str] = {}  # attachment key -> container ID, for the report
        self.history: dict[str, list[str]] = {}  # container ID -> what happened to it

    def name_of(self, key: str) -> str:
        return f"{key} ({self.keys.get(key, 'unknown')})"

    # -- set-up and clean-up ----------------------------------------------------------------

    def setup(self) -> None:
        self.root.mkdir(mode=0o700)
        self.var.mkdir()
        sh(
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={TMPFS_SIZE},mode=0700",
            "loxi-chaos",
            str(self.var),
        )
        self.mounted = True
        for d in (
            self.state_dir,
            self.data_dir,
            self.run_dir,
            self.agent_faults,
            self.plugin_faults,
        ):
            d.mkdir(mode=0o700, exist_ok=True)

    def cleanup(self) -> None:
        """Remove everything the run made; safe to call on a half-made node."""
        for name in self.netns_names():
            sh("ip", "netns", "del", name, check=False)
        self.delete_masquerade()
        sh("ip", "link", "del", self.bridge, check=False)
        for name in self.host_veth_names():
            sh("ip", "link", "del", name, check=False)
        if self.mounted:
            self.set_readonly(False)
            for _ in range(50):
                if sh("umount", str(self.var), check=False).returncode == 0:
                    break
                time.sleep(0.1)
            self.mounted = False
        shutil.rmtree(self.root, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """What every plugin call and the agent share: the node's state and run dirs."""
        return {
            "LOXI_CNI_STATE_DIR": str(self.state_dir),
            "LOXI_CNI_RUN_DIR": str(self.run_dir),
        }

    def conf(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.1.0",
            "name": self.network,
            "type": "loxi-cni",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": True,
            "vethPrefix": self.veth_prefix,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(self.subnet4)}], [{"subnet": str(self.subnet6)}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "dataDir": str(self.data_dir),
            },
        }

    # -- faults on the node -----------------------------------------------------------------

    def fill(self) -> Path:
        """Fill the tmpfs until ENOSPC; remove the returned file to give the space back."""
        filler = self.var / "filler"
        block = b"\0" * (1 << 16)
        with open(filler, "wb", buffering=0) as f, suppress(OSError):  # unbuffered: no flush
            while True:
                f.write(block)
        return filler

    def set_readonly(self, readonly: bool, patience: float = 3.0) -> bool:
        """Remount the tmpfs; False if the kernel kept refusing (EBUSY: a file open for
        writing) for ``patience`` seconds."""
        opts = "remount,ro" if readonly else "remount,rw"
        deadline = time.monotonic() + patience
        while True:
            if sh("mount", "-o", opts, str(self.var), check=False).returncode == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def netns_names(self) -> list[str]:
        try:
            return sorted(
                n for n in os.listdir("/var/run/netns") if n.startswith(self.netns_prefix)
            )
        except FileNotFoundError:
            return []

    def host_veth_names(self) -> list[str]:
        with IPRoute() as ipr:
            names = [link.get("IFLA_IFNAME") for link in ipr.get_links()]
        return [n for n in names if n and n.startswith(self.veth_prefix)]

    def delete_masquerade(self) -> int:
        """Delete this network's nftables elements (what a reboot does to kernel state)."""
        elems = self._nft_elements()
        script = "".join(
            f"delete element inet loxi-cni {set_name} {{ {key} }}\n"
            for found in elems.values()
            for set_name, key in found
        )
        if script:
            subprocess.run(
                ["nft", "-f", "-"], input=script, text=True, capture_output=True, timeout=30
            )
        return sum(len(v) for v in elems.values())

    # -- reading it back --------------------------------------------------------------------

    def _nft_elements(self) -> dict[str, list[tuple[str, str]]]:
        """Elements tagged with this network: container ID -> [(set, key in nft syntax)]."""
        proc = sh("nft", "-j", "list", "table", "inet", "loxi-cni", check=False)
        if proc.returncode != 0:
            return {}
        out: dict[str, list[tuple[str, str]]] = {}
        for obj in json.loads(proc.stdout)["nftables"]:
            s = obj.get("set")
            if s is None or s.get("name") not in NFT_SETS:
                continue
            for item in s.get("elem", ()):
                if not (isinstance(item, dict) and "elem" in item):
                    continue
                parts = str(item["elem"].get("comment", "")).split(" ")
                if len(parts) == 3 and parts[0] == self.network:
                    key = element_text(item["elem"]["val"])
                    out.setdefault(parts[1], []).append((s["name"], key))
        return out

    def settle(self, timeout: float = 15.0) -> bool:
        """Until no record says "deleting": a DEL through the agent answers before the kernel
        has deleted the veth, and the record goes when it has. False if some never did."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for entry in _entries(self.state_dir / RECORD_DIR):
                if entry.name.endswith(".json") and not _is_temp(entry.name):
                    with suppress(FileNotFoundError, ValueError):
                        states.append(json.loads(Path(entry.path).read_bytes()).get("state"))
            if "deleting" not in states:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def inspect(self) -> Holdings:
        h = Holdings()
        store = self.data_dir / self.network
        for entry in _entries(store):
            if entry.name in STORE_FILES or entry.name.startswith("last_reserved_ip."):
                continue
            try:
                ipaddress.ip_address(entry.name)
            except ValueError:
                (h.temps if _is_temp(entry.name) else h.strays).append(entry.path)
                continue
            h.reservations[entry.name] = Path(entry.path).read_bytes().decode()
        for entry in _entries(self.data_dir / INDEX_DIR / self.network):
            if _is_temp(entry.name):
                h.temps.append(entry.path)
                continue
            doc = json.loads(Path(entry.path).read_bytes())
            h.index[entry.name] = (doc["containerID"], doc["ifname"])
        for entry in _entries(self.state_dir / RECORD_DIR):
            if _is_temp(entry.name):
                h.temps.append(entry.path)
            elif entry.name.endswith(".json"):
                h.records[entry.name[: -len(".json")]] = json.loads(Path(entry.path).read_bytes())
            else:
                h.strays.append(entry.path)
        h.locks = {e.name for e in _entries(self.run_dir / "locks")}
        # Temporary files anywhere else in the state the plugin writes.
        for top in (self.state_dir, self.data_dir):
            for dirpath, _dirs, names in os.walk(top):
                h.temps.extend(
                    os.path.join(dirpath, n)
                    for n in names
                    if _is_temp(n) and os.path.join(dirpath, n) not in h.temps
                )
        with IPRoute() as ipr:
            dump = ipr.get_links()
            index_of = {link["index"]: link.get("IFLA_IFNAME") for link in dump}
            bridge = next((i for i, n in index_of.items() if n == self.bridge), None)
            for link in dump:
                name = link.get("IFLA_IFNAME")
                alias = link.get("IFLA_IFALIAS") or ""
                if name.startswith(self.veth_prefix) or alias.startswith(
                    f"loxi-cni {self.network} "
                ):
                    h.veths[name] = {
                        "alias": alias,
                        "master": index_of.get(link.get("IFLA_MASTER")),
                    }
                if bridge is not None and link.get("IFLA_MASTER") == bridge:
                    h.ports.add(name)
        h.nft = self._nft_elements()
        return h


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _is_temp(name: str) -> bool:
    return name.endswith(".tmp")


# -- the verdict ------------------------------------------------------------------------------


def attachment_key(network: str, container_id: str, ifname: str = IFNAME) -> str:
    """The plugin's key (loxicni.plugin.naming), recomputed here on purpose."""
    import hashlib

    ident = f"{network}\0{container_id}\0{ifname}".encode()
    return hashlib.sha256(ident).hexdigest()[:32]


@dataclass
class Verdict:
    leaks: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


def pod_problems(node: Node, pod: PodView, h: Holdings) -> list[str]:
    """Why a pod believed up is not: interface, addresses, gateway reachability, and the
    node's records of it."""
    out: list[str] = []
    ips = pod.ips()
    proc = sh("ip", "-n", pod.netns, "-j", "addr", "show", "dev", IFNAME, check=False)
    if proc.returncode != 0:
        return [f"no {IFNAME} in {pod.netns}: {proc.stderr.strip()}"]
    info = json.loads(proc.stdout)
    present = {
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
        for a in info[0].get("addr_info", ())
    }
    for address, gateway in ips:
        if address not in present:
            out.append(f"{IFNAME} lacks {address}")
        if not gateway:
            out.append(f"no gateway for {address} in the result")
            continue
        flag = "-4" if address.version == 4 else "-6"
        for _ in range(3):  # the first probe may wait on neighbour discovery
            ping = sh(
                "ip",
                "netns",
                "exec",
                pod.netns,
                "ping",
                flag,
                "-c1",
                "-W2",
                "-q",
                gateway,
                check=False,
            )
            if ping.returncode == 0:
                break
        else:
            out.append(f"gateway {gateway} unreachable from {address}")
        if h.reservations.get(str(address.ip), "") != f"{pod.container_id}\r\n{IFNAME}":
            out.append(f"{address.ip} is not reserved for it")
    record = h.records.get(attachment_key(node.network, pod.container_id))
    if record is None or record.get("state") != "ready":
        out.append(f"its record is {'missing' if record is None else record.get('state')}")
    veth = h.veths.get(pod.host_veth)
    if veth is None or veth["master"] != node.bridge:
        out.append(
            f"host veth {pod.host_veth} is {'missing' if veth is None else 'off the bridge'}"
        )
    want = sorted((f"pods{a.version}", str(a.ip)) for a, _ in ips) + sorted(
        (f"local{a.version}", f"{a.ip} . {a.network}") for a, _ in ips
    )
    have = sorted(h.nft.get(pod.container_id, []))
    if sorted(want) != have:
        out.append(f"masquerade elements {have}, expected {sorted(want)}")
    return out


def verify(node: Node, up: Sequence[PodView], forgotten: Sequence[PodView] = ()) -> Verdict:
    """Every pod in ``up`` works; nothing is held for anything else. Pods a runtime lost
    track of (``forgotten``) may still hold what they had, until a GC releases it."""
    v = Verdict()
    h = node.inspect()
    for pod in up:
        problems = pod_problems(node, pod, h)
        if problems:
            v.broken.append(f"{pod.container_id}: " + "; ".join(problems))
    owners = [*up, *forgotten]
    cids = {p.container_id for p in owners}
    keys = {attachment_key(node.network, c) for c in cids}
    addresses = {str(a.ip): p.container_id for p in owners for a, _ in p.ips()}
    for ip, content in h.reservations.items():
        if addresses.get(ip) is None or content != f"{addresses[ip]}\r\n{IFNAME}":
            v.leaks.append(f"reservation {ip} ({content!r})")
    v.leaks += [f"index entry {n} of {o}" for n, o in h.index.items() if o[0] not in cids]
    v.leaks += [
        f"record {k} of {r.get('container_id')}" for k, r in h.records.items() if k not in keys
    ]
    v.leaks += [f"lock file {node.name_of(k)}" for k in h.locks - keys]
    v.leaks += [f"temporary file {p}" for p in h.temps]
    v.leaks += [f"stray file {p}" for p in h.strays]
    host_veths = {p.host_veth for p in owners}
    v.leaks += [f"veth {n} ({a['alias']!r})" for n, a in h.veths.items() if n not in host_veths]
    v.leaks += [f"bridge port {n}" for n in h.ports - host_veths]
    v.leaks += [
        f"nft element {s} {{ {k} }} of {cid}"
        for cid, found in h.nft.items()
        if cid not in cids
        for s, k in found
    ]
    return v


# -- the agent, supervised --------------------------------------------------------------------


class Agent:
    """The node agent under a supervisor that restarts it when it dies, as systemd or a
    DaemonSet would (after RESTART_DELAY)."""

    RESTART_DELAY = 0.1

    def __init__(self, node: Node) -> None:
        self.node = node
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.held = False  # down on purpose (a reboot): not restarted
        self.starts = 0
        self.deaths = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name="agent-supervisor", daemon=True
        )

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            **self.node.env(),
            "LOXI_CNI_FAULTS": str(self.node.agent_faults),
        }
        with open(self.node.agent_log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.node.plugin, "agent", "--socket", str(self.node.socket), "--metrics", "off"],
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1

    def _supervise(self) -> None:
        while not self._stop.wait(0.02):
            with self.lock:
                if self.held or self.proc is None or self.proc.poll() is None:
                    continue
                self.deaths += 1
                self.proc = None
            time.sleep(self.RESTART_DELAY)
            with self.lock:
                if not self.held and self.proc is None and not self._stop.is_set():
                    self._spawn()

    def stall(self, seconds: float) -> bool:
        """Freeze the agent (SIGSTOP) for ``seconds``, then let it go on."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                return False
            proc = self.proc
            proc.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        proc.send_signal(signal.SIGCONT)
        return True

    def kill9(self) -> bool:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                return False
            self.proc.send_signal(signal.SIGKILL)
            return True

    @contextmanager
    def down(self) -> Iterator[None]:
        """Kill the agent and keep it down for the block, then start it again."""
        with self.lock:
            self.held = True
            if self.proc is not None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
                self.proc = None
        try:
            yield
        finally:
            with self.lock:
                self.held = False
                self._spawn()

    def wait_up(self, timeout: float = 60) -> bool:
        """Until the agent answers a status request (it reconciles before it listens)."""
        from loxicni import client
        from loxicni.base import wire

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                code, _ = client.call_agent(
                    {wire.ADMIN_KEY: "status"}, b"", path=str(self.node.socket), timeout=10
                )
                if code == 0:
                    return True
            except (client.AgentUnavailable, client.AgentLost):
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=15)
