"""Rootful podman 4.3 with `network_backend = "cni"` on a network whose conflist uses loxi-cni.

podman shows an address only when the result names the interface (`interfaces` and
`ips[].interface`), sends VERSION before each ADD and DEL, keeps libcni's result cache in
/var/lib/cni/results, and releases the network on `podman stop`.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from .helpers import Network, ipv4_of, ping
from .oci import Image
from .runtimes import Podman

SERVE = "trap 'exit 0' TERM; sleep 600 & wait"


def test_run_inspect_reach_stop_rm(podman: Podman, network: Network, busybox: Image) -> None:
    name = f"loxirt-{uuid.uuid4().hex[:6]}"
    run = ["run", "--pull", "never", "--network", network.name]
    run += ["--cgroup-parent", podman.cgroup_parent]
    cid = podman(*run, "-d", "--name", name, busybox.name, "sh", "-c", SERVE).stdout.strip()

    # podman inspect shows the address loxi-cni reserved for this container.
    info = podman.inspect(name)
    attached = info["NetworkSettings"]["Networks"]
    assert list(attached) == [network.name]
    ip = attached[network.name]["IPAddress"]
    assert network.reservations() == {ip: cid}
    assert attached[network.name]["Gateway"] == network.gateway
    assert attached[network.name]["IPPrefixLen"] == 24
    sandbox = info["NetworkSettings"]["SandboxKey"]
    assert Path(sandbox).exists()
    assert network.cached() == [f"{network.name}-{cid}-eth0"]

    # Inside: the address and MAC podman reported, a default route, the gateway reachable.
    shown = podman("exec", name, "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert ipv4_of(shown) == [f"{ip}/24"]
    mac = podman("exec", name, "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac == attached[network.name]["MacAddress"]
    assert f"default via {network.gateway} dev eth0" in podman("exec", name, "ip", "route").stdout
    podman("exec", name, "ping", "-c1", "-W2", network.gateway)
    assert ping(ip).returncode == 0, "host cannot reach the container"

    # A second container on the network reaches the first; `--rm` releases its own address.
    podman(*run, "--rm", busybox.name, "ping", "-c1", "-W2", ip, timeout=90)
    assert network.reservations() == {ip: cid}
    assert len(network.host_veths()) == 1

    podman("stop", "--time", "10", name, timeout=90)
    network.assert_nothing_left(cid)
    assert not Path(sandbox).exists()
    assert network.cached() == []
    podman("rm", name)
    assert podman("ps", "--all", "--quiet").stdout.split() == []

    calls = network.calls()
    assert all(c.rc == 0 for c in calls), calls
    seq = [(c.command, c.container_id) for c in calls]
    other = seq[3][1] if len(seq) > 3 else "?"
    assert other != cid
    # podman asks VERSION before every ADD and DEL.
    assert seq == [
        ("VERSION", ""), ("ADD", cid),
        ("VERSION", ""), ("ADD", other),
        ("VERSION", ""), ("DEL", other),
        ("VERSION", ""), ("DEL", cid),
    ], seq  # fmt: skip
    network.assert_nothing_left(cid, other)
