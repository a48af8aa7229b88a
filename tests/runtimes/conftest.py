"""Real runtimes drive the installed loxi-cni: containerd (ctr, CRI), podman and cnitool.

Fixtures give each test a network of its own (name, bridge, veth prefix, 10.98.X.0/24 subnet,
dataDir, conf and bin dirs) and the runtime confined to a temp dir, and take it all down
afterwards, even when the test failed. The tools come from `make runtimes-deps`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.plugin import PLUGIN

from . import oci
from .helpers import CNITOOL, CRICTL, LOOPBACK, Network, new_network
from .runtimes import Containerd, Podman

NEEDED = ("containerd", "ctr", "runc", "podman", "conmon", "gcc", "unshare", "ip", "ping")


@pytest.fixture(autouse=True, scope="session")
def _tools() -> None:
    """Missing tools are a broken set-up, not a reason to skip: fail and say how to fix it."""
    if os.geteuid() != 0:
        pytest.skip("the runtime tests create bridges, netns and containers: they need root")
    missing = [t for t in NEEDED if shutil.which(t) is None]
    missing += [str(p) for p in (CRICTL, CNITOOL, LOOPBACK, oci.BUSYBOX) if not p.exists()]
    if not os.access(PLUGIN, os.X_OK):
        missing.append(PLUGIN)
    if missing:
        pytest.fail(f"missing {missing}: run `make test-runtimes` (install + runtimes-deps)")


@pytest.fixture(scope="session")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci.Image]:
    """The app image of every runtime: built once, imported by each runtime instance."""
    directory = tmp_path_factory.mktemp("busybox")
    yield oci.busybox_image(directory / "busybox.tar", "loxi.local/busybox:rt")
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pause(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci.Image]:
    """CRI's sandbox image (no registry to pull registry.k8s.io/pause from)."""
    directory = tmp_path_factory.mktemp("pause")
    yield oci.pause_image(directory / "pause.tar", "loxi.local/pause:rt", directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    net = new_network(tmp_path / "net")
    try:
        yield net
    finally:
        net.cleanup()


@pytest.fixture
def containerd(tmp_path: Path, network: Network, busybox: oci.Image) -> Iterator[Containerd]:
    """A containerd whose CRI reads the test network's conf and bin dirs.

    The bin dir's loxi-cni is the logging wrapper, so tests see how the runtime called it.
    """
    network.install_bin(log_calls=True, loopback=True)
    network.write_conflist()
    daemon = Containerd(
        tmp_path / "containerd", network.bin_dir, network.conf_dir, f"/{network.name}"
    )
    try:
        daemon.start()
        daemon.import_image(busybox)
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
def podman(network: Network, busybox: oci.Image) -> Iterator[Podman]:
    """Podman with the busybox image loaded; its CNI dirs must exist before any podman call."""
    network.install_bin(log_calls=True)
    network.write_conflist()
    # Not below tmp_path: podman refuses a runroot path longer than 50 characters.
    engine = Podman(Path(tempfile.mkdtemp(prefix="loxirt-pm-")), network)
    try:
        engine.load(busybox)
        yield engine
    finally:
        engine.close()
