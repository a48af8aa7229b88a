"""The NetworkPolicy oracle: what Kubernetes says a set of policies allows, for the tests.

`expected(cluster, policies, probes)` runs `netpol-oracle` (tests/netpol/oracle-go, built by
`scripts/k8s/netpol-oracle.sh` from the Go module proxy) and returns one `Verdict` per probe.
The oracle is independent of loxi-cni: nothing under loxicni/ is imported here or there, and
every decision is upstream code. Policies are decoded strictly, defaulted and validated by
the API server's own code (k8s.io/kubernetes/pkg/apis/networking), label selectors are
evaluated by k8s.io/apimachinery, and the rest (selection, peers, ipBlock/except, ports, named
ports, endPort, protocols, ingress and egress both having to allow) by the matcher of cyclonus,
the simulator sigs.k8s.io/network-policy-api's policy-assistant is derived from.
See tests/netpol/README.md.

The binary comes from $LOXI_NETPOL_ORACLE or the build script's cache. Missing: the calling
test fails under LOXI_K8S_REQUIRED=1 (`make e2e`), and is skipped otherwise.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "k8s" / "netpol-oracle.sh"

Protocol = Literal["TCP", "UDP", "SCTP"]
Family = Literal[4, 6]


@dataclass(frozen=True)
class ContainerPort:
    """A port a pod's container declares: what a named port in a policy resolves to."""

    port: int
    protocol: Protocol = "TCP"
    name: str = ""


@dataclass(frozen=True)
class Namespace:
    name: str
    # The API server adds kubernetes.io/metadata.name=<name>; the oracle does too.
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ips: tuple[str, ...]  # at most one per family
    ports: tuple[ContainerPort, ...] = ()
    node: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ip(self, family: Family) -> str | None:
        return next((ip for ip in self.ips if (":" in ip) == (family == 6)), None)


@dataclass(frozen=True)
class ClusterSpec:
    """The namespaces and pods the policies apply to, and addresses outside the cluster."""

    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    externals: tuple[str, ...] = ()

    def pod(self, key: str) -> Pod:
        for p in self.pods:
            if p.key == key:
                return p
        raise KeyError(key)


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class External:
    """An address outside the cluster (for ipBlock): a source, or an egress destination."""

    ip: str


Endpoint = PodRef | External


@dataclass(frozen=True)
class Probe:
    """A connection attempt: `port` is a number, or a name among the destination pod's ports
    (of `protocol`). `family` picks the pods' addresses; an External's must match it."""

    source: Endpoint
    destination: Endpoint
    port: int | str
    protocol: Protocol = "TCP"
    family: Family = 4

    def to_json(self) -> dict[str, Any]:
        return {
            "source": _endpoint_json(self.source),
            "destination": _endpoint_json(self.destination),
            "port": self.port,
            "protocol": self.protocol,
            "family": self.family,
        }


@dataclass(frozen=True)
class DirectionVerdict:
    """One direction: Ingress at the destination pod, Egress at the source pod.

    `selecting`: the policies ("namespace/name") of this direction whose podSelector selects
    the pod; `allowing`: those of them with a rule that admits the traffic. Allowed when none
    selects it or one allows. An address outside the cluster is never selected.
    """

    allowed: bool
    selecting: tuple[str, ...]
    allowing: tuple[str, ...]


@dataclass(frozen=True)
class Verdict:
    probe: Probe
    allowed: bool  # ingress and egress both allow
    ingress: DirectionVerdict
    egress: DirectionVerdict
    source_ip: str
    destination_ip: str
    port: int  # a named probe port, resolved
    port_name: str  # the destination pod's name for (port, protocol), "" if none
    protocol: Protocol
    # A pod to itself: upstream's e2e suite calls this undefined and ignores it; the oracle
    # applies the policies as to any other pod.
    loopback: bool


class OracleError(RuntimeError):
    """The oracle refused its input: an invalid policy (as the API server would refuse it),
    an unknown field, or a probe naming what the cluster does not have."""


def _endpoint_json(e: Endpoint) -> dict[str, str]:
    return {"pod": e.key} if isinstance(e, PodRef) else {"ip": e.ip}


def cluster_json(cluster: ClusterSpec) -> dict[str, Any]:
    return {
        "namespaces": {ns.name: {"labels": dict(ns.labels)} for ns in cluster.namespaces},
        "pods": [
            {
                "namespace": p.namespace,
                "name": p.name,
                "labels": dict(p.labels),
                "ips": list(p.ips),
                "ports": [
                    {"name": cp.name, "port": cp.port, "protocol": cp.protocol} for cp in p.ports
                ],
                "node": p.node,
            }
            for p in cluster.pods
        ],
    }


@functools.cache
def _find_binary() -> Path | None:
    if env := os.environ.get("LOXI_NETPOL_ORACLE"):
        return Path(env) if os.access(env, os.X_OK) else None
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-path"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def oracle_binary() -> Path:
    """The built oracle; fails (LOXI_K8S_REQUIRED=1) or skips the calling test without it."""
    path = _find_binary()
    if path is None:
        msg = "NetworkPolicy oracle not built: run `scripts/k8s/netpol-oracle.sh` (or `make e2e`)"
        if os.environ.get("LOXI_K8S_REQUIRED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _direction(d: Mapping[str, Any]) -> DirectionVerdict:
    return DirectionVerdict(
        allowed=bool(d["allowed"]),
        selecting=tuple(d["selecting"]),
        allowing=tuple(d["allowing"]),
    )


def _verdict(probe: Probe, v: Mapping[str, Any]) -> Verdict:
    return Verdict(
        probe=probe,
        allowed=bool(v["allowed"]),
        ingress=_direction(v["ingress"]),
        egress=_direction(v["egress"]),
        source_ip=v["sourceIP"],
        destination_ip=v["destinationIP"],
        port=int(v["port"]),
        port_name=v["portName"],
        protocol=v["protocol"],
        loopback=bool(v["loopback"]),
    )


def expected_many(
    cluster: ClusterSpec,
    cases: Sequence[tuple[Sequence[Mapping[str, Any]], Sequence[Probe]]],
    *,
    cyclonus_selectors: bool = False,
) -> list[list[Verdict]]:
    """`expected` for several (policies, probes) cases at once, in one run of the oracle."""
    base = cluster_json(cluster) | {"cyclonusSelectors": cyclonus_selectors}
    stdin = "".join(
        json.dumps(base | {"policies": list(policies), "probes": [p.to_json() for p in probes]})
        + "\n"
        for policies, probes in cases
    )
    out = subprocess.run(
        [str(oracle_binary())],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if out.returncode != 0:
        raise OracleError(out.stderr.strip() or f"netpol-oracle exited {out.returncode}")
    answers = out.stdout.splitlines()
    if len(answers) != len(cases):
        raise OracleError(f"{len(answers)} answers for {len(cases)} requests")
    results = []
    for (_, probes), line in zip(cases, answers, strict=True):
        verdicts = json.loads(line)["verdicts"]
        if len(verdicts) != len(probes):
            raise OracleError(f"{len(verdicts)} verdicts for {len(probes)} probes")
        results.append([_verdict(p, v) for p, v in zip(probes, verdicts, strict=True)])
    return results


def expected(
    cluster: ClusterSpec,
    policies: Sequence[Mapping[str, Any]],
    probes: Sequence[Probe],
    *,
    cyclonus_selectors: bool = False,
) -> list[Verdict]:
    """What Kubernetes allows of each probe, under `policies` (NetworkPolicy objects as
    Kubernetes JSON: metadata.name and metadata.namespace required, apiVersion/kind optional).
    Raises OracleError for a policy the API server would refuse.

    `cyclonus_selectors` lets cyclonus evaluate label selectors itself instead of apimachinery:
    only to show where the two differ.
    """
    (verdicts,) = expected_many(
        cluster, [(policies, probes)], cyclonus_selectors=cyclonus_selectors
    )
    return verdicts
