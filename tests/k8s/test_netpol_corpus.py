"""The NetworkPolicy truth table: the seeded corpus of tests/netpol/corpus.py enforced by
loxi-cni on a simulated cluster, every probe's fate compared with the independent oracle's
verdict (tests/netpol/oracle.py: the API server's defaulting and validation, apimachinery's
selectors, cyclonus's matcher).

The corpus's cluster is made real: its namespaces (x, y, z) and nine pods as Pods on two
simulated nodes (cross-node mode ``routes``: the routed path, where tests/k8s/test_netpol.py
takes vxlan), each ADDed through the installed plugin and its node's agent, and the outside
addresses held by the router (sources of ingress, destinations of egress). Every pod and
outside address serves the corpus's ports (TCP 80, 81, 8080, UDP 53, 80, SCTP 9000). For each
case the cluster's policies become the case's, the test waits until both agents enforce exactly
those versions, and runs every probe of the case at once.

A pod's traffic to itself is always allowed here, by design (README, NetworkPolicy: "a pod
cannot block access to itself", and over its own loopback it never leaves the pod); the
oracle applies policies to it like to any pod and upstream's e2e suite ignores it, so those
probes are checked against "allowed" instead.

``make e2e`` runs a sample of the corpus (``LOXI_NETPOL_CASES``, default 40, spread over
the systematic and the random cases); ``make e2e-netpol`` runs all of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netpol import corpus, oracle
from tests.netpol.oracle import External, PodRef

from .controlplane import ControlPlane
from .netpol_world import World, require_tools, running_world

MODE = "routes"
CASES = corpus.generate(corpus.cluster())  # names and policies only; addresses come later
SAMPLE = int(os.environ.get("LOXI_NETPOL_CASES", "40") or 0)


def _sampled() -> list[str]:
    names = [c.name for c in CASES]
    if SAMPLE <= 0 or len(names) <= SAMPLE:
        return names
    step = len(names) / SAMPLE
    return [names[int(i * step)] for i in range(SAMPLE)]


@pytest.fixture(scope="module")
def world(
    control_plane: ControlPlane, agent_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    require_tools("the network policy truth table")
    oracle.oracle_binary()  # fails (make e2e) or skips before anything is built
    work = tmp_path_factory.mktemp("corpus")
    with running_world(control_plane, agent_kubeconfig, work, nodes=2, mode=MODE) as w:
        for ns in corpus.NAMESPACES:
            w.namespace(ns.name, ns.labels)
        nodes = {"node-1": w.sim.nodes[0], "node-2": w.sim.nodes[1]}
        for ns_name, name, labels, kind, node in corpus.LAYOUT:
            ports = [(p.name, p.protocol, p.port) for p in corpus.PORTS_BY_KIND[kind] if p.name]
            w.pod(ns_name, name, nodes[node], labels, ports)
        w.add_externals(corpus.EXTERNALS)
        w.listen([(port, proto.lower()) for port, proto in corpus.PROBE_PORTS])
        yield w


@pytest.fixture(scope="module")
def real_cases(world: World) -> dict[str, corpus.Case]:
    """The corpus for the real cluster's addresses (the same seed: the same cases)."""
    ips = {ref: (p.ips[4], p.ips[6]) for ref, p in world.pods.items()}
    spec = corpus.cluster(ips=ips)
    return {c.name: c for c in corpus.generate(spec)}


def _key(e: PodRef | External) -> str:
    return e.key if isinstance(e, PodRef) else e.ip


@pytest.mark.parametrize("name", _sampled())
def test_case(world: World, real_cases: dict[str, corpus.Case], name: str) -> None:
    case = real_cases[name]
    ips = {ref: (p.ips[4], p.ips[6]) for ref, p in world.pods.items()}
    verdicts = oracle.expected(corpus.cluster(ips=ips), case.policies, case.probes)
    world.apply_policies(list(case.policies))
    keys = {
        (_key(v.probe.source), _key(v.probe.destination), v.port, v.protocol.lower(),
         v.probe.family): v
        for v in verdicts
    }  # fmt: skip
    got = world.probe(keys, timeout=0.6)
    wrong = []
    for key, verdict in keys.items():
        want = True if verdict.loopback else verdict.allowed
        if got[key] != want:
            why = (
                f"ingress selecting {list(verdict.ingress.selecting)} allowing "
                f"{list(verdict.ingress.allowing)}; egress selecting "
                f"{list(verdict.egress.selecting)} allowing {list(verdict.egress.allowing)}"
            )
            wrong.append(
                f"{key[0]} -> {key[1]} {key[3]}/{key[2]} IPv{key[4]}: got "
                f"{'allowed' if got[key] else 'denied'}, oracle {want} ({why})"
            )
    assert wrong == [], f"{name}: {len(wrong)} of {len(keys)} probes differ\n" + "\n".join(wrong)
