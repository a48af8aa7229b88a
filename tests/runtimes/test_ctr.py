"""`ctr run --cni`: containerd's own client execs loxi-cni from /etc/cni/net.d + /opt/cni/bin.

ctr hard-codes those dirs, so it runs in a private mount namespace where they are the test's.
It sends ADD with CNI_NETNS=/proc/<pid>/ns/net and, for foreground runs only, DEL with an
empty CNI_NETNS once the task exits.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from tests.support.host import links
from tests.support.processes import sh, stop_process
from tests.support.waiting import wait_for

from .helpers import Network, in_private_mounts, ipv4_of, ping
from .oci import Image
from .runtimes import Containerd

NAMESPACE = "loxirt"  # ctr's namespace: the CNI container ID is "<namespace>-<container id>"
SERVE = "trap 'exit 0' TERM; ip -o -4 addr show eth0; sleep 120 & wait"


def ctr_run(ctrd: Containerd, net: Network, image: Image, cid: str, script: str) -> list[str]:
    """A foreground `ctr run --rm --cni` of ``script``, seeing only the test's CNI dirs."""
    net.cache_dir.mkdir(parents=True, exist_ok=True)
    argv = ctrd.ctr_argv(
        "run", "--rm", "--cni",
        "--fifo-dir", str(ctrd.dir / "fifo"),
        "--cgroup", f"{ctrd.cgroup_parent}/{cid}",
        "--runc-root", str(ctrd.dir / "runc"),
        image.name, cid, "sh", "-c", script,
        namespace=NAMESPACE,
    )  # fmt: skip
    binds = {
        net.conf_dir: "/etc/cni/net.d",
        net.bin_dir: "/opt/cni/bin",
        net.cache_dir: "/var/lib/cni",
    }
    return in_private_mounts(binds, argv)


def test_two_containers_get_addresses_reach_each_other_and_leave_nothing(
    containerd: Containerd, network: Network, busybox: Image, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    server, client = f"srv-{tag}", f"cli-{tag}"
    out = tmp_path / "server.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            ctr_run(containerd, network, busybox, server, SERVE),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def reserved() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"ctr run exited {proc.returncode}: {out.read_text()}")
        return network.reserved_for(f"{NAMESPACE}-{server}")

    try:
        server_ip = wait_for("the server container's reservation", reserved)
        assert server_ip in [str(h) for h in network.subnet.hosts()]
        assert server_ip != network.gateway
        wait_for("the server to print its address", lambda: ipv4_of(out.read_text()))
        assert ipv4_of(out.read_text()) == [f"{server_ip}/24"]
        (veth,) = network.host_veths()
        assert {ln["ifname"]: ln.get("master") for ln in links()}[veth] == network.bridge
        assert ping(server_ip).returncode == 0, "host cannot reach the container"
        # libcni (inside ctr) cached the result, in the test's stand-in for /var/lib/cni.
        assert network.cached(network.cache_dir) == [f"{network.name}-{NAMESPACE}-{server}-eth0"]

        # A second, foreground container: its address, route, the gateway and the server.
        run = sh(
            ctr_run(
                containerd,
                network,
                busybox,
                client,
                "set -e; ip -o -4 addr show eth0; ip route; "
                f"ping -c1 -W2 {network.gateway}; ping -c1 -W2 {server_ip}",
            ),
            timeout=90,
        )
        (client_addr,) = ipv4_of(run.stdout)
        client_ip = client_addr.split("/")[0]
        assert client_addr.endswith("/24") and client_ip not in (server_ip, network.gateway)
        assert client_ip in [str(h) for h in network.subnet.hosts()]
        assert f"default via {network.gateway} dev eth0" in run.stdout
        assert run.stdout.count("1 packets received") == 2, run.stdout

        # The client exited: its address and veth are gone, the server's are still there.
        assert network.reservations() == {server_ip: f"{NAMESPACE}-{server}"}
        assert network.host_veths() == [veth]

        containerd.ctr("task", "kill", server, namespace=NAMESPACE)
        assert proc.wait(30) == 0, out.read_text()
    finally:
        stop_process(proc)

    network.assert_nothing_left(f"{NAMESPACE}-{server}", f"{NAMESPACE}-{client}")
    assert network.cached(network.cache_dir) == []
    assert containerd.ctr("containers", "ls", "-q", namespace=NAMESPACE).stdout.split() == []
    dels = [c for c in network.calls() if c.command == "DEL"]
    assert [(c.container_id, c.netns, c.rc) for c in dels] == [
        (f"{NAMESPACE}-{client}", "", 0),
        (f"{NAMESPACE}-{server}", "", 0),
    ], "ctr sends DEL with an empty CNI_NETNS after a foreground task exits"


def test_setup_rejected_by_ctr_is_undone_while_its_netns_lives(
    containerd: Containerd, network: Network, busybox: Image
) -> None:
    """containerd 1.6's libcni rejects a 1.1.0 result after loxi-cni's ADD succeeded.

    ctr then sends DEL with an empty CNI_NETNS while the task (and so its netns and the pod end
    of the veth) still exists: loxi-cni must find the host veth without the netns and free the
    address anyway.
    """
    network.write_conflist(version="1.1.0")
    cid = f"rej-{uuid.uuid4().hex[:6]}"
    run = sh(ctr_run(containerd, network, busybox, cid, "true"), check=False, timeout=90)
    assert run.returncode != 0
    assert 'unsupported CNI result version "1.1.0"' in run.stdout + run.stderr

    calls = [(c.command, c.netns or "", c.rc) for c in network.calls()]
    assert [(cmd, rc) for cmd, _, rc in calls] == [("ADD", 0), ("DEL", 0)], calls
    assert calls[0][1].startswith("/proc/") and calls[1][1] == "", calls
    # The task is still there (created, never started), so is its netns, but not our veth.
    tasks = containerd.ctr("task", "ls", namespace=NAMESPACE).stdout.splitlines()[1:]
    (pid,) = [line.split()[1] for line in tasks if line.split()[0] == cid]
    inside = sh(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "link", "show"]).stdout
    assert "1: lo:" in inside and "eth0" not in inside, inside
    network.assert_nothing_left(f"{NAMESPACE}-{cid}")
