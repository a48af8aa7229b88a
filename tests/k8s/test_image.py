"""`make image`'s archive as a user meets it outside Kubernetes: `podman load` takes it, under
the name deploy/daemonset.yaml gives it, and the image runs on nothing but itself (FROM
scratch: no shell, no Python, no libc of a base image), with no capability at all and a
read-only root filesystem. (`ctr -n k8s.io images import` takes it in test_daemonset_e2e.)"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from tests.runtimes.helpers import Network
from tests.runtimes.oci import Image
from tests.runtimes.runtimes import Podman

from .cluster import DEPLOY, require

IMAGE_TAR = Path(os.environ.get("LOXI_CNI_IMAGE", "build/loxi-cni-image.tar"))
# What "small" means here: the tree is ~55 MB (Python's 43, libraries 11); a regression that
# drags in pip, tests or a base image's worth of files shows at once.
MAX_SIZE = 64 * 1024 * 1024


def test_podman_loads_and_runs_the_image(tmp_path: Path) -> None:
    missing = [str(IMAGE_TAR)] if not IMAGE_TAR.exists() else []
    missing += [t for t in ("podman", "runc") if shutil.which(t) is None]
    require(missing, "the image (make image) in podman")
    match = re.search(r"image: &image (\S+)", (DEPLOY / "daemonset.yaml").read_text())
    assert match is not None
    name = match.group(1)
    # podman wants CNI dirs of its own even for containers with no network
    network = Network("img", "img0", "img", ipaddress.IPv4Network("10.0.0.0/30"), tmp_path)
    network.bin_dir.mkdir()
    network.conf_dir.mkdir()
    podman = Podman(Path(tempfile.mkdtemp(prefix="loxi-img-")), network)  # runroot: < 50 chars
    try:
        podman.load(Image(name, IMAGE_TAR))
        (image,) = json.loads(podman("image", "inspect", name).stdout)
        assert image["Config"]["Entrypoint"] == ["/opt/loxi-cni/loxi-cni"]
        assert image["Config"]["Cmd"] == ["agent", "--in-cluster"]
        assert len(image["RootFS"]["Layers"]) == 1 and image["Size"] < MAX_SIZE, image["Size"]
        run = ["run", "--rm", "--pull", "never", "--network", "none", "--cap-drop", "all"]
        run += ["--read-only", "--cgroup-parent", podman.cgroup_parent, name]
        version = podman(*run, "version", timeout=120).stdout
        assert re.fullmatch(r"loxi-cni \S+ \(CNI [0-9., ]+\)\n", version), version
        # Nothing else is in it: no shell to run, no host Python to fall back on.
        shell = podman(*run[:-1], "--entrypoint", "/bin/sh", name, "-c", "true", check=False)
        assert shell.returncode != 0
    finally:
        podman.close()
