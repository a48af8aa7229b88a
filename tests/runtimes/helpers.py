"""What a user checks on the host around a runtime: processes, mounts, netns, IPAM files.

Every command and every wait here is bounded, so a stuck runtime fails a test instead of
hanging CI (tests.support holds the shared ones: sh, wait_for, stop_process, links).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.host import delete_links, links, unrouted
from tests.support.ipam import reservation_owners
from tests.support.plugin import PLUGIN
from tests.support.processes import sh

# The plugin's own state (runtimes pass their environment on, so the plugin sees these too).
RUN_DIR = Path(os.environ.get("LOXI_CNI_RUN_DIR", "/run/loxi-cni"))
STATE_DIR = Path(os.environ.get("LOXI_CNI_STATE_DIR", "/var/lib/loxi-cni"))
# Built by scripts/runtimes/install.sh (make runtimes-deps) from the Go module proxy.
TOOLS_DIR = Path(os.environ.get("LOXI_RUNTIME_TOOLS_DIR", "/var/cache/loxi-cni/bin"))
CRICTL = TOOLS_DIR / "crictl-v1.34.0"
CNITOOL = TOOLS_DIR / "cnitool-v1.3.0"
LOOPBACK = Path("/usr/lib/cni/loopback")  # Debian containernetworking-plugins; CRI needs it
# containerd 1.6 and podman 4.3 link libcni 1.1.2, which knows results up to 1.0.0 only: a
# 1.1.0 conflist makes them fail with 'unsupported CNI result version "1.1.0"' after the ADD.
LEGACY_CNI_VERSION = "1.0.0"
_handed_out: set[int] = set()


def pids_with_arg(arg: str) -> list[int]:
    """Processes whose command line contains ``arg`` (a path unique to one test run)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.encode() in part for part in cmdline):
            out.append(int(entry.name))
    return out


def unmount_under(root: Path) -> None:
    """Lazily unmount whatever a runtime left mounted below ``root``, deepest first."""
    prefix = str(root.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def remove_tree(root: Path) -> None:
    unmount_under(root)
    shutil.rmtree(root, ignore_errors=True)


def in_private_mounts(binds: Mapping[Path, str], cmd: Sequence[str | Path]) -> list[str]:
    """``cmd`` run in a private mount namespace with ``binds`` (source -> host path) mounted.

    What the command reads at those host paths (/etc/cni/net.d, /opt/cni/bin, /var/lib/cni) is
    then the test's temp dir, and the host's own dirs are never written.
    """
    script = []
    for source, target in binds.items():
        if not Path(target).is_dir():
            raise AssertionError(f"{target} is missing: run `make runtimes-deps`")
        script.append(f'mount --bind "{source}" "{target}" || exit 97')
    script.append('exec "$@"')
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", "\n".join(script), "sh", *[str(c) for c in cmd],
    ]  # fmt: skip


# ------------------------------------------------------------------------------ the host


def forget_netns(path: str) -> None:
    """Unmount and remove a runtime's named netns that outlived its sandbox (after a failure)."""
    if Path(path).exists():
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)
        Path(path).unlink(missing_ok=True)


def ping(target: str) -> subprocess.CompletedProcess[str]:
    """One bounded ping from the host: what a user tries first."""
    return sh(["ping", "-n", "-c", "1", "-W", "2", target], check=False, timeout=15)


def ipv4_of(text: str, ifname: str = "eth0") -> list[str]:
    """The ``a.b.c.d/len`` addresses of ``ifname`` in ``ip -o -4 addr`` output."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) > 3 and words[1].rstrip(":") == ifname and words[2] == "inet":
            out.append(words[3])
    return out


@dataclass
class Call:
    """One exec of the plugin as a runtime made it, logged by the wrapper in the bin dir."""

    command: str
    netns: str | None  # None: CNI_NETNS unset
    container_id: str
    ifname: str
    args: str
    rc: int

    @property
    def cni_args(self) -> dict[str, str]:
        return dict(kv.split("=", 1) for kv in self.args.split(";") if "=" in kv)


WRAPPER = """#!/usr/bin/python3.11 -IS
# Logs how the runtime called loxi-cni (env and exit code), then behaves exactly like it.
import json, os, subprocess, sys
real = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "loxi-cni.real")
rc = subprocess.call([real])
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open({log!r}, "a") as f:
    f.write(json.dumps({{"env": env, "rc": rc}}) + "\\n")
sys.exit(rc)
"""


@dataclass
class Network:
    """One test's CNI network: unique name, bridge, veth prefix and subnet, its own dirs."""

    name: str
    bridge: str
    veth_prefix: str
    subnet: ipaddress.IPv4Network
    workdir: Path
    checked_ids: set[str] = field(default_factory=set)  # attachments assert_nothing_left saw

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "ipam"

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.workdir / "bin"

    @property
    def cache_dir(self) -> Path:
        """Bound over /var/lib/cni for ctr and cnitool: libcni's result cache lands here."""
        return self.workdir / "cni-cache"

    @property
    def calls_log(self) -> Path:
        return self.workdir / "calls.jsonl"

    def plugin_conf(self, **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "type": "loxi-cni",
            "bridge": self.bridge,
            "isGateway": True,
            "vethPrefix": self.veth_prefix,
            "ipam": {
                "type": "host-local",
                "subnet": str(self.subnet),
                "dataDir": str(self.data_dir),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
        conf.update(extra)
        return conf

    def write_conflist(
        self, version: str = LEGACY_CNI_VERSION, filename: str | None = None, **extra: Any
    ) -> Path:
        """The conflist a runtime finds in ``conf_dir``: loxi-cni alone, or with ``extra``."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        path = self.conf_dir / (filename or f"10-{self.name}.conflist")
        capabilities = extra.pop("capabilities", None)
        plugin = self.plugin_conf(**extra)
        if capabilities:
            plugin["capabilities"] = capabilities
        conflist = {"cniVersion": version, "name": self.name, "plugins": [plugin]}
        path.write_text(json.dumps(conflist, indent=1))
        return path

    def install_bin(self, *, log_calls: bool = False, loopback: bool = False) -> Path:
        """A CNI bin dir holding a copy of the installed loxi-cni (and loopback for CRI).

        A copy, not a symlink: under a bind mount over /opt/cni/bin a link to
        /opt/cni/bin/loxi-cni would point at itself. With ``log_calls`` the runtime's
        ``loxi-cni`` is a wrapper that records each call's env and exit code.
        """
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        if log_calls:
            shutil.copy2(PLUGIN, self.bin_dir / "loxi-cni.real")
            wrapper = self.bin_dir / "loxi-cni"
            wrapper.write_text(WRAPPER.format(log=str(self.calls_log)))
            wrapper.chmod(0o755)
        else:
            shutil.copy2(PLUGIN, self.bin_dir / "loxi-cni")
        if loopback:
            shutil.copy2(LOOPBACK, self.bin_dir / "loopback")
        return self.bin_dir

    def calls(self) -> list[Call]:
        if not self.calls_log.exists():
            return []
        out = []
        for line in self.calls_log.read_text().splitlines():
            entry = json.loads(line)
            env = entry["env"]
            out.append(
                Call(
                    command=env.get("CNI_COMMAND", ""),
                    netns=env.get("CNI_NETNS"),
                    container_id=env.get("CNI_CONTAINERID", ""),
                    ifname=env.get("CNI_IFNAME", ""),
                    args=env.get("CNI_ARGS", ""),
                    rc=entry["rc"],
                )
            )
        return out

    # ---------------------------------------------------------------- what a user checks
    def reservations(self) -> dict[str, str]:
        """IP -> container ID of the reservation files in the IPAM dataDir."""
        return reservation_owners(self.data_dir, self.name)

    def reserved_for(self, container_id: str) -> str | None:
        ips = [ip for ip, owner in self.reservations().items() if owner == container_id]
        assert len(ips) <= 1, f"{container_id} holds several addresses: {ips}"
        return ips[0] if ips else None

    def host_veths(self) -> list[str]:
        """Host links of this network: named with its veth prefix or enslaved to its bridge."""
        return sorted(
            ln["ifname"]
            for ln in links()
            if ln["ifname"].startswith(self.veth_prefix) or ln.get("master") == self.bridge
        )

    def plugin_files(self, container_id: str, ifname: str = "eth0") -> list[str]:
        """loxi-cni's own files of one attachment still on the host.

        Its lock (/run/loxi-cni/locks/KEY) and its record (/var/lib/loxi-cni/attachments/
        KEY.json), KEY being sha256(network NUL container ID NUL ifname)[:32]: both are meant
        to go with the attachment (loxicni/plugin/locks.py, records.py).
        """
        raw = f"{self.name}\0{container_id}\0{ifname}".encode()
        key = hashlib.sha256(raw).hexdigest()[:32]
        paths = (RUN_DIR / "locks" / key, STATE_DIR / "attachments" / f"{key}.json")
        return [str(p) for p in paths if p.exists()]

    def assert_nothing_left(self, *container_ids: str) -> None:
        """No reservation file, no host veth and no plugin file of these attachments remain."""
        assert self.reservations() == {}, f"reservations left: {self.reservations()}"
        assert self.host_veths() == [], f"host veths left: {self.host_veths()}"
        self.checked_ids.update(container_ids)
        for cid in container_ids:
            assert self.plugin_files(cid) == [], f"{cid}: loxi-cni left {self.plugin_files(cid)}"

    def cached(self, cache_dir: Path = Path("/var/lib/cni")) -> list[str]:
        """libcni's result cache entries of this network (``results/<net>-<id>-<ifname>``)."""
        results = cache_dir / "results"
        return sorted(p.name for p in results.glob(f"{self.name}-*")) if results.is_dir() else []

    def cleanup(self) -> None:
        """Undo what a failed test left: GC with no valid attachment, then the links, the dirs.

        GC is the plugin's own way to release what a runtime never DELeted (address, veth,
        its attachment record); links are deleted by name in case GC itself is what broke.
        """
        if self.data_dir.exists():
            conf = {"cniVersion": "1.1.0", "name": self.name, **self.plugin_conf()}
            env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "GC", "CNI_PATH": str(self.bin_dir)}
            sh([PLUGIN], input=json.dumps(conf), env=env, check=False, timeout=60)
        delete_links(*self.host_veths(), self.bridge)
        for cid in self.checked_ids:  # what a plugin bug left, once the test has reported it
            for path in self.plugin_files(cid):
                Path(path).unlink(missing_ok=True)
        remove_tree(self.workdir)


def free_subnet() -> ipaddress.IPv4Network:
    """A 10.98.X.0/24 that no route on the host uses and no other test here was given."""
    candidates = [x for x in range(16, 250) if x not in _handed_out]
    random.shuffle(candidates)
    net = unrouted(ipaddress.IPv4Network(f"10.98.{x}.0/24") for x in candidates)
    if net is None:
        raise AssertionError("no free 10.98.X.0/24 subnet on this host")
    _handed_out.add(net.network_address.packed[2])
    return net


def new_network(workdir: Path) -> Network:
    tag = uuid.uuid4().hex[:6]
    return Network(
        name=f"loxirt-{tag}",
        bridge=f"lxrt{tag}",
        veth_prefix=f"lr{tag}",
        subnet=free_subnet(),
        workdir=workdir,
    )
