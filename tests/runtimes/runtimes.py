"""The runtimes under test, each confined to one temp dir so the host's own state is untouched.

containerd gets its own config, root, state, socket and CNI dirs; podman its own
containers.conf, storage and CNI dirs; ctr and cnitool run in private mount namespaces where
the CNI dirs they hard-code are the test's. ``close()`` removes everything, even after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.host import remove_cgroup
from tests.support.processes import sh, stop_process
from tests.support.waiting import wait_for

from .helpers import CRICTL, Network, forget_netns, in_private_mounts, pids_with_arg, remove_tree
from .oci import Image

CONTAINERD_CONFIG = """\
version = 2
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # No CAP_SYS_RESOURCE here: a sandbox's negative oom_score_adj would fail every RunPodSandbox.
  restrict_oom_score_adj = true
  sandbox_image = "{pause}"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = "{dir}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"""


@dataclass
class Containerd:
    """A containerd of our own: ``start()`` it, talk to it with ``ctr()``, ``close()`` it."""

    dir: Path
    cni_bin: Path
    cni_conf: Path
    cgroup_parent: str  # every container's cgroup goes below it; removed by close()
    pause: str = "loxi.local/pause:rt"
    proc: subprocess.Popen[bytes] | None = None
    netns_seen: set[str] = field(default_factory=set)

    @property
    def socket(self) -> str:
        return str(self.dir / "containerd.sock")

    @property
    def log(self) -> Path:
        return self.dir / "containerd.log"

    def start(self, timeout: float = 30) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "config.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(
                dir=self.dir,
                socket=self.socket,
                pause=self.pause,
                cni_bin=self.cni_bin,
                cni_conf=self.cni_conf,
            )
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited: {self.log.read_text()[-3000:]}")
            return self.ctr("version", check=False, timeout=10).returncode == 0

        wait_for("containerd to answer on its socket", ready, timeout)

    def ctr_argv(self, *args: str, namespace: str = "loxirt") -> list[str]:
        return ["ctr", "--address", self.socket, "--namespace", namespace, *args]

    def ctr(
        self, *args: str, namespace: str = "loxirt", check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return sh(self.ctr_argv(*args, namespace=namespace), check=check, timeout=timeout)

    def import_image(self, image: Image, namespace: str = "loxirt") -> None:
        self.ctr("image", "import", str(image.tarball), namespace=namespace, timeout=120)

    def crictl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        config = self.dir / "crictl.yaml"
        if not config.exists():
            config.write_text(
                f"runtime-endpoint: unix://{self.socket}\n"
                f"image-endpoint: unix://{self.socket}\ntimeout: 30\n"
            )
        return sh([str(CRICTL), "--config", str(config), *args], check=check, timeout=timeout)

    def inspectp(self, pod_id: str) -> dict[str, Any]:
        """``crictl inspectp``; remembers the pod's netns so ``close()`` can remove a leftover."""
        data: dict[str, Any] = json.loads(self.crictl("inspectp", "-o", "json", pod_id).stdout)
        spec = data.get("info", {}).get("runtimeSpec", {})
        for ns in spec.get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network" and ns.get("path"):
                self.netns_seen.add(ns["path"])
        return data

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._remove_workloads()
            stop_process(self.proc)
        # Shims outlive containerd: they are ours when started for our socket.
        for pid in pids_with_arg(self.socket):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for path in self.netns_seen:
            forget_netns(path)
        remove_cgroup(self.cgroup_parent)
        remove_tree(self.dir)
        # containerd 1.6 hard-codes its shims' socket dir: drop it (and its parent) when empty.
        for empty in (Path("/run/containerd/s"), Path("/run/containerd")):
            with contextlib.suppress(OSError):
                empty.rmdir()

    def _remove_workloads(self) -> None:
        """Pods via CRI, then every task and container in every namespace: bounded, best effort."""
        if CRICTL.exists():
            pods = self.crictl("pods", "-q", check=False, timeout=30).stdout.split()
            for pod in pods:
                self.crictl("stopp", pod, check=False, timeout=60)
                self.crictl("rmp", "-f", pod, check=False, timeout=60)
        namespaces = self.ctr("namespaces", "ls", "-q", check=False, timeout=30).stdout.split()
        for ns in namespaces:
            for cid in self.ctr("containers", "ls", "-q", namespace=ns, check=False).stdout.split():
                self.ctr("task", "kill", "-s", "SIGKILL", cid, namespace=ns, check=False)
                deadline = time.monotonic() + 10
                while (
                    self.ctr("task", "rm", "-f", cid, namespace=ns, check=False).returncode
                    and cid in self.ctr("task", "ls", "-q", namespace=ns, check=False).stdout
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.2)
                self.ctr("containers", "rm", cid, namespace=ns, check=False)


PODMAN_CONF = """\
[containers]
# podman's rootful default nofile (1048576) is above this machine's hard limit (20000), and
# without CAP_SYS_RESOURCE runc fails: "error setting rlimit type 7: operation not permitted".
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{cni_bin}"]
network_config_dir = "{cni_conf}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{dir}/events.log"
runtime = "runc"
tmp_dir = "{dir}/tmp"
image_copy_tmp_dir = "{dir}/tmp"
"""


@dataclass
class Podman:
    """Rootful podman with its own containers.conf, storage and CNI dirs."""

    dir: Path
    network: Network
    sandboxes: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "containers.conf").write_text(
            PODMAN_CONF.format(
                dir=self.dir, cni_bin=self.network.bin_dir, cni_conf=self.network.conf_dir
            )
        )
        (self.dir / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\n'
            f'graphroot = "{self.root}"\nrunroot = "{self.runroot}"\n'
        )

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def runroot(self) -> Path:
        return self.dir / "runroot"

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.network.name}"

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "CONTAINERS_CONF": str(self.dir / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf"),
            "TMPDIR": str(self.dir),
        }

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return sh([*self.base_argv(), *args], env=self.env(), check=check, timeout=timeout)

    def base_argv(self) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot)]

    def load(self, image: Image) -> None:
        """`podman load`, with the host's blob-info cache and /var/tmp swapped for temp dirs.

        c/image writes /var/lib/containers/cache/blob-info-cache-v1.boltdb on every copy, for
        any --root, and stages the archive in /var/tmp whatever TMPDIR says; a private mount
        namespace keeps both off the host. Only load copies: run uses the local image
        (--pull never) and must share the host's mounts (the netns it makes).
        """
        cache, var_tmp = self.dir / "blob-cache", self.dir / "var-tmp"
        cache.mkdir(exist_ok=True)
        var_tmp.mkdir(exist_ok=True)
        argv = [*self.base_argv(), "load", "--quiet", "--input", str(image.tarball)]
        binds = {cache: "/var/lib/containers/cache", var_tmp: "/var/tmp"}
        sh(in_private_mounts(binds, argv), env=self.env(), timeout=120)

    def inspect(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self("inspect", name).stdout)[0]
        key = data.get("NetworkSettings", {}).get("SandboxKey")
        if key:
            self.sandboxes.add(key)
        return data

    def close(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
        for path in self.sandboxes:
            forget_netns(path)
        remove_cgroup(self.cgroup_parent)
        remove_tree(self.dir)
        with contextlib.suppress(OSError):  # runc's default root, made by podman's runc calls
            Path("/run/runc").rmdir()
