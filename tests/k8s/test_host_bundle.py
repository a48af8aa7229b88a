"""What the DaemonSet's init container puts on a host, and what `loxi-cni uninstall` takes off:
deploy/bundle.sh's self-contained tree installed by `loxi-cni install-host` into directories
of the test's (the tree relocated, as any --tree-dir does), then exec'd as a runtime would,
with nothing from the host's Python (no agent: the in-process path, nft for ipMasq from the
tree). Upgrades keep the tree the replaced executable named and drop older ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import NetNS

from loxicni.agent.install import relocate, tree_of
from loxicni.net import masq
from tests.support.host import delete_links, links

from .cluster import run_dir_left

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("LOXI_CNI_VENV", "/opt/loxi-cni/venv"))
HOST_ENV = {"PATH": "/usr/bin:/bin"}  # no Python of ours on it


@dataclass
class Host:
    """A host's directories, all under the test's tmp dir."""

    root: Path

    @property
    def trees(self) -> Path:
        return self.root / "opt" / "loxi-cni"

    @property
    def bin_dir(self) -> Path:
        return self.root / "opt" / "cni" / "bin"

    @property
    def plugin(self) -> Path:
        return self.bin_dir / "loxi-cni"

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc" / "cni" / "net.d"

    @property
    def env(self) -> dict[str, str]:
        return {
            **HOST_ENV,
            "LOXI_CNI_STATE_DIR": str(self.root / "var" / "lib" / "loxi-cni"),
            "LOXI_CNI_RUN_DIR": str(self.root / "run" / "loxi-cni"),
        }

    def install(self, tree: Path) -> str:
        """`loxi-cni install-host` run from ``tree``, as the init container runs it."""
        argv = [str(tree / "loxi-cni"), "install-host", "--tree-dir", str(self.trees)]
        proc = subprocess.run(
            [*argv, "--cni-bin-dir", str(self.bin_dir)],
            env=HOST_ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def installed(self) -> list[str]:
        return sorted(p.name for p in self.trees.iterdir())


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tree as the image carries it (built for where it is, so it runs in place)."""
    tree = tmp_path_factory.mktemp("image") / "opt" / "loxi-cni"
    subprocess.run(
        ["bash", str(REPO / "deploy/bundle.sh"), str(VENV), str(tree), str(tree)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    yield tree
    shutil.rmtree(tree.parents[1], ignore_errors=True)


def another_version(tree: Path, dest: Path, version: str) -> Path:
    """A copy of ``tree`` that says it is ``version``: an image of another release."""
    shutil.copytree(tree, dest, symlinks=True)
    manifest = json.loads((dest / "bundle.json").read_text())
    manifest.update(version=version, id=f"{version}-{uuid.uuid4().hex[:12]}")
    (dest / "bundle.json").write_text(json.dumps(manifest))
    exe = dest / "loxi-cni"
    exe.write_bytes(relocate(exe.read_bytes(), str(dest)))
    return dest


def test_install_upgrade_and_the_installed_executable(image_tree: Path, tmp_path: Path) -> None:
    host = Host(tmp_path / "host")
    first = json.loads((image_tree / "bundle.json").read_text())["id"]
    assert "copied" in host.install(image_tree)
    assert host.installed() == [first]
    assert tree_of(host.plugin.read_bytes()) == str(host.trees / first)
    assert host.plugin.stat().st_mode & 0o111
    # The interpreter is the tree's, loaded by the tree's own loader and libraries.
    version = subprocess.run(
        [str(host.plugin), "version"], env=HOST_ENV, capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0 and version.stdout.startswith("loxi-cni "), version.stderr

    # Installing what is installed (a restarted init container) rewrites nothing.
    before = host.plugin.stat()
    assert "already there" in host.install(image_tree)
    after = host.plugin.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # An upgrade: the new tree beside the old, which stays for calls that started from it.
    second = another_version(image_tree, tmp_path / "v2" / "loxi-cni", "9.9.1")
    out = host.install(second)
    second_id = json.loads((second / "bundle.json").read_text())["id"]
    assert f"replaced the executable of {host.trees / first}" in out
    assert host.installed() == sorted([first, second_id])
    assert tree_of(host.plugin.read_bytes()) == str(host.trees / second_id)
    version = subprocess.run(
        [str(host.plugin), "version"], env=HOST_ENV, capture_output=True, text=True, timeout=30
    )
    assert version.stdout.startswith("loxi-cni 0."), version.stdout  # the package's own version
    # And a rollback to the first: the second stays, nothing else was there to go.
    host.install(image_tree)
    assert host.installed() == sorted([first, second_id])
    assert tree_of(host.plugin.read_bytes()) == str(host.trees / first)
    # A third version: the one before the current stays, the older one goes.
    third = another_version(image_tree, tmp_path / "v3" / "loxi-cni", "9.9.2")
    third_id = json.loads((third / "bundle.json").read_text())["id"]
    out = host.install(third)
    assert f"removed {host.trees / second_id}" in out
    assert host.installed() == sorted([first, third_id])


def test_a_pod_through_the_installed_tree_then_uninstall(image_tree: Path, tmp_path: Path) -> None:
    """ADD from the tree on the host (ipMasq by the tree's nft); `loxi-cni uninstall` refuses
    while the pod is attached, then, after its DEL, leaves nothing of loxi-cni behind."""
    host = Host(tmp_path / "host")
    host.install(image_tree)
    tag = uuid.uuid4().hex[:8]
    netns, bridge, network = f"loxib-{tag}", f"lxb{tag}", f"bundle-{tag}"
    data_dir = host.root / "var" / "lib" / "cni" / "networks"
    plugin_conf = {
        "type": "loxi-cni",
        "bridge": bridge,
        "isGateway": True,
        "ipMasq": True,
        "vethPrefix": "lb" + tag[:4],
        "ipam": {"type": "host-local", "subnet": "10.95.250.0/24", "dataDir": str(data_dir)},
    }
    host.conf_dir.mkdir(parents=True)
    conf_path = host.conf_dir / "10-loxi-cni.conflist"
    conflist = {"cniVersion": "1.1.0", "name": network, "plugins": [plugin_conf]}
    conf_path.write_text(json.dumps(conflist))
    env = {
        **host.env,
        "CNI_CONTAINERID": f"c{tag}",
        "CNI_NETNS": f"/var/run/netns/{netns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(host.bin_dir),
    }

    def call(command: str) -> subprocess.CompletedProcess[bytes]:
        conf = {"cniVersion": "1.1.0", "name": network, **plugin_conf}
        return subprocess.run(
            [str(host.plugin)], input=json.dumps(conf).encode(),
            env={**env, "CNI_COMMAND": command}, capture_output=True, timeout=60,
        )  # fmt: skip

    def uninstall() -> subprocess.CompletedProcess[str]:
        argv = [str(host.plugin), "uninstall", "--tree-dir", str(host.trees)]
        argv += ["--cni-bin-dir", str(host.bin_dir), "--cni-conf-dir", str(host.conf_dir)]
        return subprocess.run(argv, env=host.env, capture_output=True, text=True, timeout=120)

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
        assert masq.masqueraded_attachments(network) == {(f"c{tag}", "eth0")}

        # A pod still attached: nothing is removed, the config is back, the pod is named.
        refused = uninstall()
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"container c{tag} ({network}, eth0" in refused.stdout
        assert json.loads(conf_path.read_text()) == conflist
        assert host.plugin.exists() and any(ln["ifname"] == bridge for ln in links())

        delete = call("DEL")
        assert delete.returncode == 0, delete.stdout + delete.stderr
        done = uninstall()
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"bridges removed: {bridge}" in done.stdout
        assert not conf_path.exists()
        assert not any(ln["ifname"] == bridge for ln in links())
        assert masq.masqueraded_attachments(network) == set()
        assert not (data_dir / network).exists() and not (data_dir / ".loxi-cni").exists()
        for gone in ("var/lib/loxi-cni", "opt/loxi-cni", "opt/cni/bin/loxi-cni"):
            assert not (host.root / gone).exists(), gone
        assert run_dir_left(host.root / "run" / "loxi-cni") == []
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
        delete_links(bridge)
