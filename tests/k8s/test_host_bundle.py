"""What the DaemonSet's init container puts on a host: deploy/bundle.sh's self-contained tree
installed by deploy/install-host.sh, then exec'd as a runtime would, with nothing from the
host's Python (the in-process path: no agent, so pyroute2 and the IPAM run from the tree)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from pyroute2 import NetNS

from tests.support.host import delete_links

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("LOXI_CNI_VENV", "/opt/loxi-cni/venv"))


def test_bundle_installs_and_runs_a_pod_without_the_hosts_python(tmp_path: Path) -> None:
    host = tmp_path / "host"
    prefix = host / "opt" / "loxi-cni"  # where the tree lives on "the host"
    bundle = tmp_path / "image" / "opt" / "loxi-cni"
    subprocess.run(
        ["bash", str(REPO / "deploy/bundle.sh"), str(VENV), str(bundle), str(prefix)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    out = subprocess.run(
        ["sh", str(REPO / "deploy/install-host.sh")],
        env={"PATH": os.environ["PATH"], "BUNDLE": str(bundle), "HOST_ROOT": str(host)},
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    plugin = host / "opt" / "cni" / "bin" / "loxi-cni"
    assert "loxi-cni 0." in out and plugin.stat().st_mode & 0o111
    # Reinstalling over an installed tree (an upgrade) works too, and leaves no temp tree.
    subprocess.run(
        ["sh", str(REPO / "deploy/install-host.sh")],
        env={"PATH": os.environ["PATH"], "BUNDLE": str(bundle), "HOST_ROOT": str(host)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert sorted(p.name for p in (host / "opt").iterdir()) == ["cni", "loxi-cni"]
    # The interpreter is the bundle's, loaded by the bundle's own loader and libraries.
    version = subprocess.run(
        [str(plugin), "version"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert version.returncode == 0, version.stderr

    tag = uuid.uuid4().hex[:8]
    netns, bridge = f"loxib-{tag}", f"lxb{tag}"
    conf = {
        "cniVersion": "1.1.0",
        "name": f"bundle-{tag}",
        "type": "loxi-cni",
        "bridge": bridge,
        "isGateway": True,
        "vethPrefix": "lb" + tag[:4],
        "ipam": {
            "type": "host-local",
            "subnet": "10.95.250.0/24",
            "dataDir": str(tmp_path / "ipam"),
        },
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "CNI_CONTAINERID": f"c{tag}",
        "CNI_NETNS": f"/var/run/netns/{netns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(plugin.parent),
        "LOXI_CNI_NO_AGENT": "1",
        "LOXI_CNI_STATE_DIR": str(tmp_path / "state"),
    }

    def call(command: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(plugin)],
            input=json.dumps(conf).encode(),
            env={**env, "CNI_COMMAND": command},
            capture_output=True,
            timeout=60,
        )

    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    try:
        add = call("ADD")
        assert add.returncode == 0, add.stdout + add.stderr
        (ip,) = json.loads(add.stdout)["ips"]
        with NetNS(netns) as ns:
            (link,) = ns.get_links(ifname="eth0")
            held = [
                f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ns.get_addr(index=link["index"], family=2)
            ]
        assert held == [ip["address"]]
        delete = call("DEL")
        assert delete.returncode == 0, delete.stdout + delete.stderr
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
        delete_links(bridge)
