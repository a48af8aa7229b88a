"""A real Kubernetes control plane on loopback for tests: etcd, kube-apiserver and (optionally)
kube-controller-manager and kube-scheduler, built by `scripts/k8s/build.sh`. No fake API: what
passes here passes against a cluster's API server, with its validation, admission, RBAC and
TokenRequest. A real kubelet can join it too (`start_kubelet`), running Pods through
containerd's CRI.

Independent of pytest, so a script or a REPL can run one too::

    with ControlPlane(bin_dir) as cp:
        cp.kubectl("get", "namespaces")

Everything (data, certificates, kubeconfigs, logs) lives in one temp dir removed by `stop()`.
Every process binds 127.0.0.1 only (but a kubelet given a `node_ip`, for `kubectl exec`), on
ports picked free at start, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.host import free_port, remove_cgroup
from tests.support.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "k8s" / "build.sh"
SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# Controllers a test needs without a kubelet: ServiceAccounts (and their tokens) in new
# namespaces, ownerReference garbage collection, namespace deletion, the aggregated default
# ClusterRoles. Node lifecycle and pod GC stay off: they would evict the Pods of kubelet-less
# Nodes the tests create.
CONTROLLERS = (
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "clusterrole-aggregation-controller",
    "root-ca-certificate-publisher-controller",
)
_PR_SET_PDEATHSIG = 1
_NEW_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # openssl req


class ControlPlaneError(RuntimeError):
    """A component did not start, or kubectl failed; the message carries the log tail."""


def find_binaries(build: bool = False) -> Path | None:
    """The directory holding the binaries, from $LOXI_K8S_BIN_DIR or build.sh's cache.

    With `build`, missing binaries are built (minutes when cold); otherwise None is returned.
    """
    if env := os.environ.get("LOXI_K8S_BIN_DIR"):
        return Path(env) if (Path(env) / "kube-apiserver").exists() else None
    args = ["bash", str(BUILD_SCRIPT)] + ([] if build else ["--print-dir"])
    stderr = None if build else subprocess.DEVNULL
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=stderr, text=True, check=False)
    return Path(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None


def host_ip() -> str:
    """The host's IPv4 source address towards the default route: what a kubelet reports as its
    node IP when not told otherwise."""
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "get", "198.51.100.1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return str(json.loads(out)[0]["prefsrc"])


def _die_with_parent() -> None:
    """Child side of Popen: a killed test run must not leave an API server behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) owned by this object.

    Attributes once started: `server` (https URL), `ca_path`, `kubeconfig` (admin: a client
    certificate in group system:masters), `work_dir`.
    """

    def __init__(
        self,
        bin_dir: Path,
        work_dir: Path | None = None,
        *,
        controller_manager: bool = True,
        controllers: Sequence[str] = CONTROLLERS,
        scheduler: bool = False,
        start_timeout: float = 120.0,
    ) -> None:
        self.bin_dir = bin_dir
        self._own_work_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="loxi-k8s-"))
        kcm = bin_dir / "kube-controller-manager"
        self.controller_manager = controller_manager and kcm.exists()
        self.controllers = tuple(controllers)
        self.scheduler = scheduler
        self.start_timeout = start_timeout
        self.pki = self.work_dir / "pki"
        self.ca_path = self.pki / "ca.crt"
        self.kubeconfig = self.work_dir / "admin.kubeconfig"
        self.server = ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._kubelets: dict[str, _KubeletFiles] = {}
        self._token_configs = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Certificates, etcd, kube-apiserver until /readyz, then the controller manager."""
        deadline = time.monotonic() + self.start_timeout
        try:
            self._make_pki()
            etcd_url = self._start_etcd(deadline)
            self._start_apiserver(etcd_url, deadline)
            if self.controller_manager:
                self._start_controller_manager(deadline)
            if self.scheduler:
                self._start_scheduler(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process (TERM, then KILL after 10 s) and remove the work dir."""
        for node in list(self._kubelets):
            self.stop_kubelet(node)
        for name in reversed(list(self._procs)):
            self._terminate(name)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _terminate(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            stop_process(proc, grace=10)

    def _spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.work_dir / f"{name}.log").open("wb")
        with log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                preexec_fn=_die_with_parent,
            )
        self._procs[name] = proc
        return proc

    def _wait(self, name: str, ready: Any, deadline: float) -> None:
        """Poll `ready()` until true; fail at once if the process died, or at the deadline."""
        proc = self._procs[name]
        while True:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode}:\n{_tail(self.log(name))}"
                )
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{name} not ready in time:\n{_tail(self.log(name))}")
            time.sleep(0.2)

    def log(self, name: str) -> Path:
        """The log of a component: etcd, kube-apiserver, kube-controller-manager, kubelet-NODE."""
        return self.work_dir / f"{name}.log"

    # -- certificates --------------------------------------------------------------------------

    def _make_pki(self) -> None:
        """A throwaway CA, the serving cert, client certs and the ServiceAccount signing key."""
        pki = self.pki
        pki.mkdir(parents=True, exist_ok=True)
        _openssl(
            "req",
            "-x509",
            *_NEW_EC_KEY,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=loxi-cni-test-ca",
            cwd=pki,
        )
        sans = (
            "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        )
        self._sign("apiserver", "/CN=kube-apiserver", "serverAuth", sans)
        self._sign("admin", "/O=system:masters/CN=loxi-cni-admin", "clientAuth")
        self._sign("controller-manager", "/CN=system:kube-controller-manager", "clientAuth")
        # What the API server shows kubelets when it proxies exec, attach, logs, port-forward.
        self._sign("apiserver-kubelet-client", "/CN=kube-apiserver-kubelet-client", "clientAuth")
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        for key in pki.glob("*.key"):
            key.chmod(0o600)

    def _sign(self, name: str, subject: str, usage: str, sans: str = "") -> None:
        ext = self.pki / f"{name}.ext"
        lines = [
            "basicConstraints=CA:FALSE",
            "keyUsage=digitalSignature,keyEncipherment",
            f"extendedKeyUsage={usage}",
        ] + ([f"subjectAltName={sans}"] if sans else [])
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req",
            "-new",
            *_NEW_EC_KEY,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=self.pki,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext.name,
            "-out",
            f"{name}.crt",
            cwd=self.pki,
        )

    # -- components ---------------------------------------------------------------------------

    def _start_etcd(self, deadline: float) -> str:
        client, peer = free_port(), free_port()
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=loxi",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=loxi={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # a test store: durability buys nothing, fsync costs seconds
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return bool(json.load(r).get("health") == "true")

        self._wait("etcd", healthy, deadline)
        return url

    def _start_apiserver(self, etcd_url: str, deadline: float) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        p = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                # A kubelet's Hostname address is its node name, which no DNS here resolves.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",  # a CNI DaemonSet is privileged
                # The `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints
                # validation refuses: keep no endpoints instead of logging that error every 10 s.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                "--v=1",
            ],
        )
        ctx = self.ssl_context()

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", timeout=3, context=ctx) as r:
                return bool(r.status == 200 and r.read().strip() == b"ok")

        self._wait("kube-apiserver", ready, deadline)
        self._cert_kubeconfig(self.kubeconfig, "admin")

    def _start_controller_manager(self, deadline: float) -> None:
        kubeconfig = self._cert_kubeconfig(
            self.work_dir / "controller-manager.kubeconfig", "controller-manager"
        )
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--controllers={','.join(self.controllers)}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.ca_path}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--cert-dir={self.work_dir / 'controller-manager-certs'}",
                "--v=1",
            ],
        )
        # Ready for tests once it runs the ServiceAccount controller: `default` gets its SA.
        self._wait(
            "kube-controller-manager",
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            deadline,
        )

    def _start_scheduler(self, deadline: float) -> None:
        """kube-scheduler, as the user its default ClusterRoleBinding names."""
        self._sign("scheduler", "/CN=system:kube-scheduler", "clientAuth")
        kubeconfig = self._cert_kubeconfig(self.work_dir / "scheduler.kubeconfig", "scheduler")
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={(port := free_port())}",
                f"--cert-dir={self.work_dir / 'scheduler-certs'}",
                "--v=1",
            ],
        )
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # its self-signed cert

        def healthy() -> bool:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx
            ) as r:
                return bool(r.read().strip() == b"ok")

        self._wait("kube-scheduler", healthy, deadline)

    # -- clients --------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """TLS to the API server as the admin (for Python clients that skip kubeconfigs)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return ctx

    def write_kubeconfig(
        self, path: Path, user: Mapping[str, str], server: str | None = None
    ) -> Path:
        """A kubeconfig at `path` reaching the API server (at `server`, an address of its
        certificate: by default its loopback one) as `user` (a kubeconfig user entry)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "loxi",
                    "cluster": {
                        "server": server or self.server,
                        "certificate-authority": str(self.ca_path),
                    },
                }
            ],
            "users": [{"name": "user", "user": dict(user)}],
            "contexts": [{"name": "loxi", "context": {"cluster": "loxi", "user": "user"}}],
            "current-context": "loxi",
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        path.chmod(0o600)
        return path

    def _cert_kubeconfig(self, path: Path, name: str) -> Path:
        """A kubeconfig at `path` authenticating with the client certificate `_sign(name)`
        made."""
        user = {
            "client-certificate": f"{self.pki / name}.crt",
            "client-key": f"{self.pki / name}.key",
        }
        return self.write_kubeconfig(path, user)

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin (or as `kubeconfig`); raise with its stderr if it fails."""
        argv = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.work_dir / 'kubectl-cache'}",
            f"--request-timeout={int(timeout)}s",
            *args,
        ]
        res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} exited with {res.returncode}: {res.stderr.strip()}"
            )
        return res

    def get_json(self, *args: str, kubeconfig: Path | None = None) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json", kubeconfig=kubeconfig).stdout)

    def apply(self, manifest: Mapping[str, Any] | str) -> None:
        """`kubectl apply` an object (dict) or YAML/JSON text (several documents allowed)."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "-f", "-", input=text)

    def token_for(
        self, namespace: str, serviceaccount: str, duration: str = "1h", node: str | None = None
    ) -> str:
        """A ServiceAccount token from the TokenRequest API (`kubectl create token`). With
        `node`, bound to that Node (which must exist): the API server then names the node in
        the token's user info (`authentication.kubernetes.io/node-name`), as it does in the
        token of a pod running on it, and the token dies with the Node."""
        bound = ["--bound-object-kind=Node", f"--bound-object-name={node}"] if node else []
        res = self.kubectl(
            "create", "token", serviceaccount, "-n", namespace, f"--duration={duration}", *bound
        )
        return res.stdout.strip()

    def kubeconfig_for_token(self, token: str) -> Path:
        """A kubeconfig that authenticates with `token` only, to act as a ServiceAccount."""
        self._token_configs += 1
        path = self.work_dir / f"token-{self._token_configs}.kubeconfig"
        self.write_kubeconfig(path, user={"token": token})
        return path

    def create_namespace(self, name: str, timeout: float = 30.0) -> None:
        """A namespace whose `default` ServiceAccount exists, so Pods can be admitted in it.

        The ServiceAccount admission plugin refuses Pods until that SA exists; the controller
        manager creates it, or this does when no controller manager runs.
        """
        self.kubectl("create", "namespace", name)
        if not self.controller_manager:
            self.kubectl("create", "serviceaccount", "default", "-n", name)
            return
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "sa", "default", "-n", name, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"no default ServiceAccount in {name} after {timeout} s")
            time.sleep(0.2)

    def create_node(
        self,
        name: str,
        pod_cidrs: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Register a Node object (no kubelet does) with spec.podCIDR/podCIDRs; returns it.

        podCIDR is the first of `pod_cidrs` (one per IP family), as the node IPAM controller
        sets it.
        """
        spec: dict[str, Any] = {}
        if pod_cidrs:
            spec = {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            },
            "spec": spec,
        }
        out = self.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(node)).stdout
        created: dict[str, Any] = json.loads(out)
        return created

    # -- kubelet ---------------------------------------------------------------------------------

    def start_kubelet(
        self,
        node: str,
        cri_socket: str,
        *,
        pod_cidrs: Sequence[str] = (),
        cgroup_root: str = "/loxi-kubelet",
        node_ip: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        """A real kubelet (needs root and `build.sh kubelet`) that registers Node `node` and runs
        its Pods through the CRI at `cri_socket` (containerd 1.6 works); returns once the Node
        exists, with `pod_cidrs` patched in (no node IPAM controller runs). The Node turns Ready
        when the runtime has a CNI config.

        Its API (exec, logs, port-forward through the API server) listens on 127.0.0.1, which
        the API server cannot reach: the kubelet refuses a loopback node IP, so the Node's
        InternalIP is another address. With `node_ip` (one of the host's addresses, see
        `host_ip`; or "IPv4,IPv6" for a dual-stack node) it listens there (on the first) and
        reports it as the InternalIP(s), so `kubectl exec` works; a client needs a certificate
        of the throwaway CA (the API server has one).

        Made to leave the host as found: root dir, pod logs and volume plugins in the work dir,
        Pod cgroups under `cgroup_root` (give the runtime's cleanup the same one), cgroup v1
        allowed (this machine's hierarchy), no iptables chains. What it still changes on the
        host, `stop_kubelet` undoes: the kernel sysctls it sets (saved here) and the two paths
        hard-coded in it, /var/lib/kubelet/device-plugins and /var/log/containers. So one
        kubelet per machine at a time.
        """
        kubelet = self.bin_dir / "kubelet"
        if not kubelet.exists():
            raise ControlPlaneError(f"no {kubelet}: run `scripts/k8s/build.sh kubelet`")
        name = f"kubelet-{node}"
        work = self.work_dir / name
        work.mkdir()
        files = _KubeletFiles(
            root_dir=work / "root",
            cgroup_root=cgroup_root,
            created=[p for p in _KUBELET_HOST_PATHS if not p.exists()],
            sysctls={k: (_PROC_SYS / k).read_text() for k in _KUBELET_SYSCTLS},
        )
        self._kubelets[node] = files
        self._sign(name, f"/O=system:nodes/CN=system:node:{node}", "clientAuth")
        kubeconfig = self._cert_kubeconfig(work / "kubeconfig", name)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.ca_path)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{cri_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": cgroup_root,
            "failCgroupV1": False,  # the kubelet refuses cgroup v1 hosts by default since 1.35
            "failSwapOn": False,
            "address": node_ip.split(",")[0] if node_ip else "127.0.0.1",
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": (healthz := free_port()),
            "podLogsDir": str(work / "pod-logs"),
            "volumePluginDir": str(work / "volume-plugins"),
            "resolvConf": "/etc/resolv.conf",
            "hairpinMode": "none",
            # Static pods: manifests the kubelet runs itself, with a mirror Pod in the API.
            "staticPodPath": str(self.static_pod_dir(node)),
            # Else it adds KUBE-FIREWALL (a DROP rule in INPUT/OUTPUT) and canary chains to the
            # host's iptables and keeps them: kube-proxy's business, not a test's.
            "makeIPTablesUtilChains": False,
            # A shared machine's disk and memory must never make it evict or GC test images.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
        }
        self.static_pod_dir(node).mkdir()
        (work / "config.json").write_text(json.dumps(config, indent=2))
        # cgroupfs wants the root in every hierarchy before it starts.
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if hierarchy.is_dir() and (hierarchy / "cgroup.procs").exists():
                (hierarchy / cgroup_root.strip("/")).mkdir(exist_ok=True)
        self._spawn(
            name,
            [
                str(kubelet),
                f"--config={work / 'config.json'}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={files.root_dir}",
                f"--cert-dir={work / 'pki'}",
                f"--hostname-override={node}",
                *([f"--node-ip={node_ip}"] if node_ip else []),
                "--v=1",
            ],
        )

        def registered() -> bool:
            url = f"http://127.0.0.1:{healthz}/healthz"
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.read().strip() != b"ok":
                    return False
            return self.kubectl("get", "node", node, check=False).returncode == 0

        self._wait(name, registered, time.monotonic() + timeout)
        if pod_cidrs:
            patch = {"spec": {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}}
            self.kubectl("patch", "node", node, "--type=merge", "-p", json.dumps(patch))

    def static_pod_dir(self, node: str) -> Path:
        """Where the kubelet of ``node`` finds its static pod manifests."""
        return self.work_dir / f"kubelet-{node}" / "manifests"

    def stop_kubelet(self, node: str) -> None:
        """Stop the kubelet and undo its host changes: mounts under its root dir, its cgroups
        (those still holding containers stay for the runtime's cleanup) and the hard-coded
        paths it created. Its Pods' containers keep running: stop the runtime afterwards."""
        self._terminate(f"kubelet-{node}")
        files = self._kubelets.pop(node, None)
        if files is None:
            return
        # The kubelet bind-mounts its root dir onto itself (rshared) and mounts Pod volumes
        # (tmpfs) below it.
        subprocess.run(
            ["umount", "--recursive", "--lazy", str(files.root_dir)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        remove_cgroup(files.cgroup_root)
        for path in files.created:
            shutil.rmtree(path, ignore_errors=True)
        for key, value in files.sysctls.items():
            with contextlib.suppress(OSError):
                (_PROC_SYS / key).write_text(value)


_KUBELET_HOST_PATHS = (Path("/var/lib/kubelet"), Path("/var/log/containers"))
# The kubelet sets these at start (panic on oops, reboot 10 s after a panic, always overcommit,
# key quotas) and never puts them back; protectKernelDefaults would refuse to start instead.
_PROC_SYS = Path("/proc/sys")
_KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


@dataclass
class _KubeletFiles:
    """What stop_kubelet must undo."""

    root_dir: Path
    cgroup_root: str
    created: list[Path]
    sysctls: dict[str, str]
