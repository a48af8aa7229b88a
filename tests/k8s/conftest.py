"""The real control plane (etcd + kube-apiserver + kube-controller-manager) for tests/k8s.

One per session: starting it takes seconds, and tests stay apart by namespace (`namespace`).
The binaries come from `make k8s-deps` (scripts/k8s/build.sh). Without them the tests skip, so
`make test` on a machine that never built them stays green; `make test-k8s` builds them first
and sets LOXI_K8S_REQUIRED=1, so there a missing binary fails instead.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import apply_deploy
from .controlplane import ControlPlane, find_binaries

_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    bin_dir = find_binaries()
    if bin_dir is None:
        msg = "Kubernetes binaries not built: run `make k8s-deps` (or `make test-k8s`)"
        if os.environ.get("LOXI_K8S_REQUIRED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    with ControlPlane(bin_dir) as cp:
        yield cp


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace (with its `default` ServiceAccount) per test, deleted afterwards.

    The deletion is not waited for: Pods bound to a kubelet-less Node never finish terminating.
    """
    name = f"t{next(_namespaces)}"
    control_plane.create_namespace(name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def agent_kubeconfig(control_plane: ControlPlane) -> Path:
    """deploy/ applied as is; a kubeconfig holding a token of the agent's ServiceAccount."""
    return apply_deploy(control_plane)
