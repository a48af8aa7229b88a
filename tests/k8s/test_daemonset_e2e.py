"""loxi-cni installed the way users install it: `make image`'s archive imported into
containerd's k8s.io namespace, `kubectl apply -f deploy/`, then upgraded, rolled back,
uninstalled and installed again, with a real kubelet running the DaemonSet and the workload
Pods, and a real kube-scheduler and DaemonSet controller (a control plane of this module's
own, so no other test's Nodes get a DaemonSet pod, and deleting deploy/'s objects touches no
other test).

What the test changes in deploy/'s manifests, and why (the files users apply stay as shipped):
- every hostPath the agent writes (/opt/cni/bin, /opt/loxi-cni, /etc/cni/net.d, /run/loxi-cni,
  /var/lib/loxi-cni, /var/lib/cni, /var/log/loxi-cni) moves under a directory of the test's,
  mounted at that same path in the agent, and the arguments and variables naming them follow:
  other tests and other runs on this machine use the real ones at the same time. containerd's
  CRI gets the moved CNI dirs, and the moved run and state dirs in its environment (libcni
  passes it on to loxi-cni). So the init container installs the tree somewhere else than
  /opt/loxi-cni, as any --tree-dir would;
- the ConfigMap's network, bridge, veth prefix and host-local dataDir, and the overlay's vxlan
  devices, port and VNI, are the test's own, for the same reason (the host's network namespace
  is shared);
- the agent reaches the API server at its loopback address (KUBERNETES_SERVICE_HOST/PORT):
  no kube-proxy runs to make the `kubernetes` Service reachable; its metrics port is a free one;
- the image named in the DaemonSet is the archive's, or for the upgrade, a second image made
  from it that reports another version (its package metadata and tree id differ).
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from loxicni.net import masq
from tests.runtimes import oci
from tests.runtimes.helpers import CRICTL, LOOPBACK
from tests.runtimes.runtimes import Containerd
from tests.support.agent import status_or_empty
from tests.support.host import free_port, links
from tests.support.ipam import reservation_owners
from tests.support.plugin import agent_status
from tests.support.waiting import wait_for

from .cluster import (
    BUSYBOX,
    DEPLOY,
    busybox_pod,
    free_pod_cidr,
    node_ready,
    require,
    run_dir_left,
    wait_pod_ready,
)
from .controlplane import CONTROLLERS, ControlPlane, find_binaries, host_ip

IMAGE_TAR = Path(os.environ.get("LOXI_CNI_IMAGE", "build/loxi-cni-image.tar"))
PAUSE = "loxi.local/pause:rt"
PORT = 8080
TOOLS = ("containerd", "ctr", "runc", "gcc", "ip", "nft", "umount")
# The reference plugins the shipped template chains (portmap) and the CRI needs (loopback).
PORTMAP = Path("/usr/lib/cni/portmap")
# What the agent writes on the host; the test moves each under a directory of its own.
HOST_PATHS = (
    "/opt/cni/bin", "/opt/loxi-cni", "/etc/cni/net.d", "/run/loxi-cni", "/var/lib/loxi-cni",
    "/var/lib/cni", "/var/log/loxi-cni",
)  # fmt: skip
# The agent's capabilities, as deploy/daemonset.yaml grants them: CAP_NET_ADMIN, CAP_SYS_ADMIN.
AGENT_CAPS = (1 << 12) | (1 << 21)


def _image_ref(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (entry,) = json.load(member)
    (tag,) = entry["RepoTags"]
    return str(tag)


def another_version(archive: Path, dest: Path, tag: str, version: str) -> str:
    """An image of `archive`'s tree that says it is loxi-cni `version` (its package metadata
    and its tree's bundle.json differ): what the next release's image is to an upgrade."""
    with tarfile.open(archive) as src:
        manifest = json.load(src.extractfile("manifest.json"))  # type: ignore[arg-type]
        (entry,) = manifest
        config = json.load(src.extractfile(entry["Config"]))  # type: ignore[arg-type]
        (layer_name,) = entry["Layers"]
        layer = src.extractfile(layer_name)
        assert layer is not None
        out = io.BytesIO()
        with (
            tarfile.open(fileobj=layer, mode="r|") as old,
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as new,
        ):
            for member in old:
                data = old.extractfile(member) if member.isfile() else None
                content = data.read() if data is not None else None
                if member.name.endswith(".dist-info/METADATA") and "loxi_cni-" in member.name:
                    assert content is not None
                    content = re.sub(rb"(?m)^Version: .*$", f"Version: {version}".encode(), content)
                elif member.name == "opt/loxi-cni/bundle.json":
                    doc = json.loads(content or b"{}")
                    doc.update(version=version, id=f"{version}-{uuid.uuid4().hex[:12]}")
                    content = json.dumps(doc).encode()
                if content is not None:
                    member.size = len(content)
                    new.addfile(member, io.BytesIO(content))
                else:
                    new.addfile(member)
    layer_bytes = out.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config["rootfs"]["diff_ids"] = [diff_id]
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    new_layer = diff_id.removeprefix("sha256:") + "/layer.tar"
    new_manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [new_layer]}]
    with tarfile.open(dest, "w") as tar:
        for name, data in (
            (config_name, config_bytes),
            (new_layer, layer_bytes),
            ("manifest.json", json.dumps(new_manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tag


@dataclass
class Deployment:
    """deploy/'s manifests as this test applies them (module docstring), and the node."""

    cp: ControlPlane
    root: Path  # the host paths' stand-in
    node: str
    pod_cidrs: list[str]
    containerd: Containerd
    api_port: int
    images: dict[str, str] = field(default_factory=dict)  # "v1"/"v2" -> image reference
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    metrics_port: int = field(default_factory=free_port)

    # The overlay's own settings, so no other vxlan device or port on this host is in the way.
    @property
    def vxlan_device(self) -> str:
        return f"lxv{self.tag}"

    @property
    def vxlan_port(self) -> int:
        return 40000 + int(self.tag, 16) % 20000

    @property
    def vxlan_vni(self) -> int:
        return 1000 + int(self.tag, 16) % 1000

    @property
    def network(self) -> str:
        return f"ds-{self.tag}"

    @property
    def bridge(self) -> str:
        return f"lxd{self.tag}"

    def host(self, path: str) -> Path:
        """A host path as this test has moved it."""
        return Path(f"{self.root}{path}")

    @property
    def conf_path(self) -> Path:
        return self.host("/etc/cni/net.d") / "10-loxi-cni.conflist"

    @property
    def socket(self) -> str:
        return str(self.host("/run/loxi-cni") / "agent.sock")

    @property
    def host_env(self) -> dict[str, str]:
        """What a plugin exec on the host needs to find the moved run and state dirs."""
        return {
            "LOXI_CNI_RUN_DIR": str(self.host("/run/loxi-cni")),
            "LOXI_CNI_STATE_DIR": str(self.host("/var/lib/loxi-cni")),
        }

    def _move(self, value: str) -> str:
        flag, eq, path = value.partition("=") if value.startswith("--") else ("", "", value)
        for host in HOST_PATHS:
            if path == host or path.startswith(host + "/"):
                return f"{flag}{eq}{self.root}{path}"
        return value

    def manifests(self, directory: Path, version: str) -> Path:
        """deploy/'s files, moved and named as the module docstring says, in `directory`."""
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for source in sorted(DEPLOY.glob("*.yaml")):
            docs = list(yaml.safe_load_all(source.read_text()))
            for doc in docs:
                if doc["kind"] == "DaemonSet":
                    self._daemonset(doc, self.images[version])
                elif doc["kind"] == "ConfigMap":
                    self._configmap(doc)
            (directory / source.name).write_text(yaml.safe_dump_all(docs))
        return directory

    def _daemonset(self, ds: dict[str, Any], image: str) -> None:
        spec = ds["spec"]["template"]["spec"]
        moved: dict[str, str] = {}
        for volume in spec["volumes"]:
            path = volume.get("hostPath", {}).get("path")
            if path in HOST_PATHS:
                volume["hostPath"]["path"] = f"{self.root}{path}"
                moved[volume["name"]] = path
        for container in [*spec["initContainers"], *spec["containers"]]:
            container["image"] = image
            for mount in container.get("volumeMounts", []):
                if mount["name"] in moved:
                    path = moved[mount["name"]]
                    mount["mountPath"] = mount["mountPath"].replace(path, f"{self.root}{path}")
            if "command" in container:
                command = container["command"]
                container["command"] = [command[0], *map(self._move, command[1:])]
            own = {
                "--metrics": f"127.0.0.1:{self.metrics_port}",
                "--vxlan-device": self.vxlan_device,
                "--vxlan-port": str(self.vxlan_port),
                "--vxlan-vni": str(self.vxlan_vni),
            }
            args = [self._move(a) for a in container.get("args", [])]
            container["args"] = [
                f"{flag}={own[flag]}" if (flag := a.partition("=")[0]) in own else a for a in args
            ]
            for env in container.get("env", []):
                if "value" in env:
                    env["value"] = self._move(env["value"])
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    command = container[probe]["exec"]["command"]
                    container[probe]["exec"]["command"] = [
                        command[0],
                        *map(self._move, command[1:]),
                    ]
        agent = spec["containers"][0]
        agent["env"] += [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(self.api_port)},
        ]

    def _configmap(self, cm: dict[str, Any]) -> None:
        template = json.loads(cm["data"]["cni-conf-template.json"])
        template["name"] = self.network
        plugin = next(p for p in template["plugins"] if p["type"] == "loxi-cni")
        plugin.update(bridge=self.bridge, vethPrefix=f"ld{self.tag[:4]}")
        plugin["ipam"]["dataDir"] = str(self.host("/var/lib/cni") / "networks")
        cm["data"]["cni-conf-template.json"] = json.dumps(template, indent=1)

    # -- what a user looks at
    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, check=check, timeout=150)

    def apply(self, directory: Path) -> None:
        self.kubectl("apply", "-f", str(directory))

    def rollout(self) -> None:
        """`kubectl rollout status` of the DaemonSet, then the Node Ready."""
        self.kubectl("rollout", "status", "ds/loxi-cni", "-n", "kube-system", "--timeout=140s")
        wait_for("the Node Ready", lambda: node_ready(self.cp, self.node), 90, interval=1)

    def agent_pod(self) -> dict[str, Any] | None:
        """The DaemonSet's pod (one node), unless none or only a terminating one exists."""
        pods = self.cp.get_json(
            "pods", "-n", "kube-system", "-l", "app.kubernetes.io/name=loxi-cni"
        )["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(live) <= 1, [p["metadata"]["name"] for p in live]
        return dict(live[0]) if live else None

    def agent_version(self) -> str:
        return str(status_or_empty(self.socket).get("version", ""))

    def node_condition(self) -> dict[str, Any]:
        conditions = self.cp.get_json("node", self.node)["status"]["conditions"]
        return dict(next(c for c in conditions if c["type"] == "Ready"))

    def reservations(self) -> dict[str, str]:
        return reservation_owners(self.host("/var/lib/cni") / "networks", self.network)

    def records(self) -> dict[str, bytes]:
        directory = self.host("/var/lib/loxi-cni") / "attachments"
        return {p.name: p.read_bytes() for p in sorted(directory.glob("*.json"))}

    def interfaces(self, namespace: str) -> dict[str, dict[str, Any]]:
        items = self.cp.get_json("podnetworkinterfaces", "-n", namespace)["items"]
        return {i["spec"]["podName"]: i for i in items}

    def uninstall(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """`loxi-cni uninstall` on the host, as a user runs it, with the moved paths."""
        argv = [str(self.host("/opt/cni/bin") / "loxi-cni"), "uninstall", *extra]
        argv += ["--vxlan-device", self.vxlan_device]
        for flag, path in (
            ("--tree-dir", "/opt/loxi-cni"), ("--cni-bin-dir", "/opt/cni/bin"),
            ("--cni-conf-dir", "/etc/cni/net.d"),
        ):  # fmt: skip
            argv += [flag, str(self.host(path))]
        env = {"PATH": "/usr/bin:/bin", **self.host_env}
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    def leftovers(self) -> dict[str, Any]:
        found = {
            "CNI config": self.conf_path.exists(),
            "bridge": any(ln["ifname"] == self.bridge for ln in links()),
            "masquerade entries": sorted(masq.masqueraded_attachments(self.network)),
            "reservations": sorted(self.reservations()),
            "host-local store": (self.host("/var/lib/cni") / "networks" / self.network).exists(),
            "state dir": self.host("/var/lib/loxi-cni").exists(),
            "run dir": run_dir_left(self.host("/run/loxi-cni")),
            "executable": (self.host("/opt/cni/bin") / "loxi-cni").exists(),
            "trees": self.host("/opt/loxi-cni").exists(),
            "vxlan devices": [
                ln["ifname"] for ln in links() if ln["ifname"].startswith(self.vxlan_device)
            ],
        }
        return {what: left for what, left in found.items() if left}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A control plane with a scheduler and the DaemonSet controller, containerd and a
    kubelet (whose Node gets pod CIDRs), the images imported; nothing of loxi-cni yet."""
    bin_dir = find_binaries()
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [t for t in TOOLS if shutil.which(t) is None]
    paths = (CRICTL, LOOPBACK, PORTMAP, oci.BUSYBOX, IMAGE_TAR)
    missing += [str(p) for p in paths if not p.exists()]
    if bin_dir is None:
        missing.append("the Kubernetes binaries")
    else:
        missing += [b for b in ("kubelet", "kube-scheduler") if not (bin_dir / b).exists()]
    require(missing, "loxi-cni installed by its DaemonSet (make image)")
    assert bin_dir is not None
    work = tmp_path_factory.mktemp("ds")
    root = work / "host"
    for path in HOST_PATHS:
        Path(f"{root}{path}").mkdir(parents=True)
    shutil.copy2(LOOPBACK, Path(f"{root}/opt/cni/bin/loopback"))
    shutil.copy2(PORTMAP, Path(f"{root}/opt/cni/bin/portmap"))
    controllers = (*CONTROLLERS, "daemonset-controller")
    with ControlPlane(bin_dir, controllers=controllers, scheduler=True) as cp:
        v4 = free_pod_cidr()
        v6 = ipaddress.ip_network(f"fd97:{v4.network_address.packed[2]:x}::/64")
        node = f"ds-{uuid.uuid4().hex[:6]}"
        cgroup_root = f"/loxi-ds-{node}"
        containerd = Containerd(
            work / "containerd", Path(f"{root}/opt/cni/bin"), Path(f"{root}/etc/cni/net.d"),
            cgroup_root, pause=PAUSE,
            env={"LOXI_CNI_RUN_DIR": f"{root}/run/loxi-cni",
                 "LOXI_CNI_STATE_DIR": f"{root}/var/lib/loxi-cni"},
        )  # fmt: skip
        port = int(cp.server.rsplit(":", 1)[1])
        deployment = Deployment(cp, root, node, [str(v4), str(v6)], containerd, port)
        try:
            containerd.start()
            images = [
                oci.pause_image(work / "pause.tar", PAUSE, work),
                oci.busybox_image(work / "busybox.tar", BUSYBOX),
                oci.Image(_image_ref(IMAGE_TAR), IMAGE_TAR),
            ]
            v1 = images[-1].name
            v2 = another_version(IMAGE_TAR, work / "v2.tar", f"{v1}-e2e2", "0.1.0+e2e2")
            images.append(oci.Image(v2, work / "v2.tar"))
            for image in images:
                containerd.import_image(image, namespace="k8s.io")
            deployment.images.update(v1=v1, v2=v2)
            cp.start_kubelet(
                node, containerd.socket, pod_cidrs=deployment.pod_cidrs, cgroup_root=cgroup_root,
                node_ip=host_ip(),
            )  # fmt: skip
            yield deployment
        finally:
            for log in (cp.log(f"kubelet-{node}"), containerd.log):
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(none)"
                print(f"----- {log.name}\n{tail}")
            _teardown(deployment)


def _teardown(d: Deployment) -> None:
    """Whatever a failed test left: the kubelet, containerd (its images go with its root),
    the agent's network on the host, the test's host dirs."""
    try:
        d.cp.stop_kubelet(d.node)
        d.containerd.close()
    finally:
        if d.host("/opt/cni/bin").joinpath("loxi-cni").exists():
            d.uninstall("--force")  # the documented way; what a failed test left goes too
        subprocess.run(["ip", "link", "del", d.bridge], capture_output=True, timeout=30)
        shutil.rmtree(d.root, ignore_errors=True)


@pytest.fixture
def namespace(deployment: Deployment) -> Iterator[str]:
    name = f"w{uuid.uuid4().hex[:6]}"
    deployment.cp.create_namespace(name)
    yield name
    deployment.kubectl(
        "delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", check=False
    )
    deployment.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _installed(d: Deployment, tmp_path: Path, version: str = "v1") -> Path:
    """deploy/ applied with the image of `version`; rolled out, the Node Ready."""
    manifests = d.manifests(tmp_path / f"deploy-{version}", version)
    d.apply(manifests)
    d.rollout()
    return manifests


def _talk(d: Deployment, namespace: str, client: str, server: dict[str, Any]) -> None:
    """The client pod reaches the server pod over each of its addresses (through the kubelet)."""
    for ip in (ip["ip"] for ip in server["status"]["podIPs"]):
        argv = ("exec", "-n", namespace, client, "--", "nc", "-w", "5", ip, str(PORT))
        assert d.kubectl(*argv).stdout.strip() == "server", f"{client} -> server at {ip}"


def _server_and_client(d: Deployment, namespace: str) -> dict[str, dict[str, Any]]:
    script = f"nc -ll -p {PORT} -e hostname"
    server = busybox_pod("server", namespace, d.node, script, port=PORT)
    for manifest in (busybox_pod("client", namespace, d.node, "sleep 3600"), server):
        d.cp.apply(manifest)
    return {n: wait_pod_ready(d.cp, namespace, n) for n in ("server", "client")}


def test_the_daemonset_installs_loxi_cni_and_pods_run_on_it(
    deployment: Deployment, namespace: str, tmp_path: Path
) -> None:
    """Before: the Node is not Ready (no CNI config). After `kubectl apply -f deploy/`: the
    init container installed the plugin, the agent runs with its two capabilities only, the
    CNI config is there, the Node is Ready, and two Pods reach each other over v4 and v6."""
    d = deployment
    assert not node_ready(d.cp, d.node)
    _installed(d, tmp_path)
    pod = d.agent_pod()
    assert pod is not None
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0
    (agent,) = pod["status"]["containerStatuses"]
    assert agent["ready"] and "running" in agent["state"]
    assert d.agent_version() == "0.1.0"
    # The agent process holds exactly the two capabilities it is given, nothing more.
    cid = agent["containerID"].removeprefix("containerd://")
    pid = json.loads(d.containerd.crictl("inspect", cid).stdout)["info"]["pid"]
    caps = dict(
        line.split(":\t") for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Cap")
    )  # fmt: skip
    assert int(caps["CapEff"], 16) == int(caps["CapBnd"], 16) == AGENT_CAPS, caps
    # What the init container installed: the executable naming its tree, beside the others.
    (tree,) = d.host("/opt/loxi-cni").iterdir()
    assert tree.name.startswith("0.1.0-")
    assert str(tree).encode() in (d.host("/opt/cni/bin") / "loxi-cni").read_bytes()
    conf = json.loads(d.conf_path.read_text())
    assert conf["name"] == d.network
    (plugin, _portmap) = conf["plugins"]
    assert plugin["ipam"]["ranges"] == [[{"subnet": c}] for c in d.pod_cidrs]

    pods = _server_and_client(d, namespace)
    for p in pods.values():
        assert [ipaddress.ip_address(ip["ip"]).version for ip in p["status"]["podIPs"]] == [4, 6]
    _talk(d, namespace, "client", pods["server"])
    pnis = wait_for("a PNI per Pod", lambda: len(d.interfaces(namespace)) == 2, interval=1)
    assert pnis
    assert agent_status(d.socket)["attachments"] == 2


@dataclass
class Churn:
    """Pods created, waited for Running and deleted, one after another, in the background."""

    d: Deployment
    namespace: str
    stop: threading.Event = field(default_factory=threading.Event)
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def __enter__(self) -> Churn:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=200)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            name = f"churn-{n}"
            n += 1
            try:
                self.d.cp.apply(busybox_pod(name, self.namespace, self.d.node, "sleep 3600"))
                wait_pod_ready(self.d.cp, self.namespace, name, timeout=90)
                self.ran.append(name)
            except Exception as exc:  # any failure: the test's assertion reports it
                self.failed.append(f"{name}: {exc}")
            self.d.kubectl(
                "delete", "pod", name, "-n", self.namespace, "--timeout=60s", check=False
            )


def _lost(d: Deployment, namespace: str, container: str) -> tuple[int, int]:
    """(replies, lost) of the pinger's `container` so far: the sequence numbers missing
    below the last one answered."""
    out = d.kubectl("logs", "pinger", "-c", container, "-n", namespace).stdout
    seqs = sorted({int(m) for m in re.findall(r"seq=(\d+) ", out)})
    return (len(seqs), seqs[-1] + 1 - len(seqs)) if seqs else (0, 0)


def _pinger(d: Deployment, namespace: str, server: dict[str, Any]) -> None:
    v4, v6 = (ip["ip"] for ip in server["status"]["podIPs"])
    pod = busybox_pod("pinger", namespace, d.node, "sleep 1")
    pod["spec"]["containers"] = [
        {
            "name": f"ping{family}",
            "image": BUSYBOX,
            "imagePullPolicy": "Never",
            "command": ["ping", f"-{family}", "-i", "0.2", ip],
        }
        for family, ip in ((4, v4), (6, v6))
    ]
    d.cp.apply(pod)
    wait_pod_ready(d.cp, namespace, "pinger")

    def replies() -> bool:
        return all(_lost(d, namespace, f"ping{f}")[0] > 5 for f in (4, 6))

    wait_for("the pinger's replies", replies, interval=1)


def _live_state(d: Deployment, namespace: str) -> dict[str, Any]:
    """What must not change for live pods while the agent is replaced."""
    pnis = d.interfaces(namespace)
    return {
        "records": d.records(),
        "reservations": d.reservations(),
        "pnis": {n: pnis[n]["metadata"]["resourceVersion"] for n in ("server", "pinger")},
        "veths": sorted(
            (ln["ifname"], ln["ifindex"])
            for ln in links()
            if ln["ifname"].startswith(f"ld{d.tag[:4]}")
        ),
    }


def _replace_agent(
    d: Deployment, namespace: str, change: Callable[[], object], version: str
) -> list[str]:
    """Make `change` (an upgrade, a rollback) with pods being created and deleted meanwhile;
    return once the agent of `version` serves and the Node is Ready: the pods that ran."""
    old_agent = d.agent_pod()
    assert old_agent is not None

    def replaced() -> bool:
        pod = d.agent_pod()
        return pod is not None and pod["metadata"]["uid"] != old_agent["metadata"]["uid"]

    with Churn(d, namespace) as churn:
        change()
        wait_for("the agent's pod to be replaced", replaced, timeout=120, interval=1)
        d.rollout()
        wait_for(f"agent {version}", lambda: d.agent_version() == version, 60, interval=1)
        # and pods against the new agent too (however slowly they come on a loaded machine)
        enough = max(len(churn.ran) + 1, 3)
        wait_for("pods to come and go", lambda: len(churn.ran) >= enough or churn.failed, 180, 1)
    assert churn.failed == [], churn.failed
    return churn.ran


def _as_a_newer_version_wrote_them(d: Deployment) -> None:
    """Give the live pods' records what a later schema may add: a higher number, new keys."""
    directory = d.host("/var/lib/loxi-cni") / "attachments"
    for path in directory.glob("*.json"):
        doc = json.loads(path.read_text())
        doc.update(schema=99, fromALaterVersion={"queues": 4})
        temp = path.with_name(f".{path.name}.new")
        temp.write_text(json.dumps(doc))
        temp.rename(path)


def test_rolling_upgrade_and_rollback_keep_pods_networked(
    deployment: Deployment, namespace: str, tmp_path: Path
) -> None:
    """v1 -> v2 by `kubectl apply` of the new image, then back by `kubectl rollout undo`: each
    time the agent is replaced, two pods keep pinging each other (at most one reply lost), pods
    created and deleted meanwhile come up (one that comes while no agent answers is set up
    in-process, from the tree on the host), and the new agent takes over the old one's
    attachments and PodNetworkInterfaces without releasing or rewriting any, even records of a
    later schema."""
    d = deployment
    _installed(d, tmp_path)
    d.cp.apply(busybox_pod("server", namespace, d.node, "sleep 3600"))
    server = wait_pod_ready(d.cp, namespace, "server")
    _pinger(d, namespace, server)
    wait_for("both PNIs", lambda: len(d.interfaces(namespace)) == 2, interval=1)
    lost = {f: _lost(d, namespace, f"ping{f}")[1] for f in (4, 6)}

    upgrade = ("0.1.0+e2e2", lambda: d.apply(d.manifests(tmp_path / "deploy-v2", "v2")))
    rollback = ("0.1.0", lambda: d.kubectl("rollout", "undo", "ds/loxi-cni", "-n", "kube-system"))
    for version, change in (upgrade, rollback):
        if version == rollback[0]:
            _as_a_newer_version_wrote_them(d)
        before = _live_state(d, namespace)
        _replace_agent(d, namespace, change, version)
        # Live pods: same records, reservations, veths, and resources not even rewritten
        # (the churn's last pod may take a moment to be gone).
        deadline = time.monotonic() + 30
        while (after := _live_state(d, namespace)) != before and time.monotonic() < deadline:
            time.sleep(1)
        assert after == before
        assert agent_status(d.socket)["attachments"] == 2
        time.sleep(1)
        for family in (4, 6):
            now = _lost(d, namespace, f"ping{family}")[1]
            assert now - lost[family] <= 1, f"IPv{family}: {now - lost[family]} lost ({version})"
            lost[family] = now
        # Trees: the current one and the one it replaced.
        assert len(list(d.host("/opt/loxi-cni").iterdir())) == 2


def test_uninstall_leaves_nothing_and_a_reinstall_works(
    deployment: Deployment, namespace: str, tmp_path: Path
) -> None:
    """`kubectl delete -f deploy/`: the agent goes, the plugin stays and still works (pods come
    and go, in-process from the tree on the host). `loxi-cni uninstall` on the host refuses
    while pods are attached and changes nothing; once they are deleted it removes the CNI
    config (the Node turns NotReady: no pod is started on a half-removed network) and leaves
    nothing of loxi-cni behind. `kubectl apply -f deploy/` then installs it again."""
    d = deployment
    manifests = _installed(d, tmp_path)
    d.cp.apply(busybox_pod("before", namespace, d.node, "sleep 3600"))
    wait_pod_ready(d.cp, namespace, "before")

    d.kubectl("delete", "-f", str(manifests), "--timeout=120s")

    def gone() -> bool:
        return d.agent_pod() is None and d.agent_version() == ""

    wait_for("the agent to be gone", gone, timeout=60, interval=1)
    assert node_ready(d.cp, d.node)
    d.cp.apply(busybox_pod("after", namespace, d.node, "sleep 3600"))
    wait_pod_ready(d.cp, namespace, "after")
    assert len(d.records()) == 2 and len(d.reservations()) == 4
    assert len(masq.masqueraded_attachments(d.network)) == 2  # ipMasq by the tree's nft

    refused = d.uninstall()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    for pod in ("before", "after"):
        assert f"attached: pod {namespace}/{pod} ({d.network}, eth0" in refused.stdout
    assert d.conf_path.exists() and len(d.records()) == 2
    assert node_ready(d.cp, d.node)

    d.kubectl("delete", "pod", "before", "after", "-n", namespace, "--timeout=90s")
    wait_for("the pods' addresses released", lambda: not d.reservations(), interval=0.5)
    done = d.uninstall()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"bridges removed: {d.bridge}" in done.stdout
    assert d.leftovers() == {}

    def not_ready() -> dict[str, Any] | None:
        ready = d.node_condition()
        return ready if ready["status"] != "True" else None

    ready = wait_for("the Node to be NotReady", not_ready, timeout=90, interval=1)
    assert "network not ready" in ready["message"].lower(), ready

    _installed(d, tmp_path)
    pods = _server_and_client(d, namespace)
    _talk(d, namespace, "client", pods["server"])
