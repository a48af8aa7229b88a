"""The corpus: reproducible, valid for the API server, covering every field, with a
manageable number of probes; and the oracle's selector evaluation cross-checked against
cyclonus's own on the whole of it. No cluster needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from . import corpus
from .oracle import ClusterSpec, PodRef, Verdict, expected_many

# What the corpus must exercise (corpus.features' names).
REQUIRED_FEATURES = {
    "policyTypes:Ingress",
    "policyTypes:Egress",
    "policyTypes:Egress+Ingress",
    "policyTypes:defaulted-Ingress",
    "policyTypes:defaulted-Ingress+Egress",
    "policyTypes:ingress-rules-ignored",
    "policyTypes:egress-rules-ignored",
    "ingress:deny-all",
    "egress:deny-all",
    "ingress:empty-rule",
    "egress:empty-rule",
    "ingress:all-peers",
    "egress:all-peers",
    "stacked",
    "peer:pods-and-namespaces",
    "ingress:ipBlock-except-v4",
    "ingress:ipBlock-except-v6",
    "egress:ipBlock-except-v4",
    "egress:ipBlock-except-v6",
    "port:numbered",
    "port:named",
    "port:endPort",
    "port:any",
    "port:protocol-TCP",
    "port:protocol-UDP",
    "port:protocol-SCTP",
    "port:protocol-defaulted",
} | {
    f"{where}:{kind}"
    for where in ("podSelector", "peer.podSelector", "peer.namespaceSelector")
    for kind in ("empty", "matchLabels", "In", "NotIn", "Exists", "DoesNotExist")
}

# Each case's probes run on a real network: keep them few.
MAX_PROBES_PER_CASE = 400
MAX_PROBES = 75_000


@pytest.fixture(scope="module")
def cluster() -> ClusterSpec:
    return corpus.cluster()


@pytest.fixture(scope="module")
def cases(cluster: ClusterSpec) -> list[corpus.Case]:
    return corpus.generate(cluster)


@pytest.fixture(scope="module")
def verdicts(cluster: ClusterSpec, cases: list[corpus.Case]) -> list[list[Verdict]]:
    return expected_many(cluster, [(c.policies, c.probes) for c in cases])


def _fingerprint(cases: Sequence[corpus.Case]) -> str:
    return json.dumps(
        [[c.name, c.policies, [p.to_json() for p in c.probes]] for c in cases], sort_keys=True
    )


def test_same_seed_same_corpus(cluster: ClusterSpec, cases: list[corpus.Case]) -> None:
    assert _fingerprint(corpus.generate(cluster)) == _fingerprint(cases)
    assert _fingerprint(corpus.generate(cluster, seed=corpus.SEED + 1)) != _fingerprint(cases)


def test_case_and_policy_names_are_unique(cases: list[corpus.Case]) -> None:
    assert len({c.name for c in cases}) == len(cases)
    for c in cases:
        names = [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in c.policies]
        assert len(set(names)) == len(names), c.name


def test_every_pod_serves_every_probe_port(cluster: ClusterSpec) -> None:
    for pod in cluster.pods:
        assert {(cp.port, cp.protocol) for cp in pod.ports} == set(corpus.PROBE_PORTS)
        names = [cp.name for cp in pod.ports if cp.name]
        assert len(names) == len(set(names)), pod.key


def test_covers_every_field(cases: list[corpus.Case]) -> None:
    covered: set[str] = set()
    for c in cases:
        covered |= corpus.features(c.policies)
    assert REQUIRED_FEATURES - covered == set()


def test_probes_are_few_and_include_every_pod_to_itself(
    cluster: ClusterSpec, cases: list[corpus.Case]
) -> None:
    assert sum(len(c.probes) for c in cases) <= MAX_PROBES
    for c in cases:
        assert len(c.probes) <= MAX_PROBES_PER_CASE, c.name
        assert len(set(c.probes)) == len(c.probes), c.name
        loops = {p.source for p in c.probes if p.source == p.destination}
        assert loops == {PodRef(p.namespace, p.name) for p in cluster.pods}, c.name


def test_the_api_server_would_accept_every_policy(
    cases: list[corpus.Case], verdicts: list[list[Verdict]]
) -> None:
    # The oracle validates with the API server's own code and refuses the whole request
    # otherwise: the fixture getting here means every policy passed.
    assert len(verdicts) == len(cases)
    assert sum(len(c.policies) for c in cases) >= 300


def test_outcomes_are_mixed(cases: list[corpus.Case], verdicts: list[list[Verdict]]) -> None:
    flat = [v for vs in verdicts for v in vs]
    denied = [v for v in flat if not v.allowed]
    assert 0.1 < len(denied) / len(flat) < 0.9
    assert any(not v.ingress.allowed for v in denied)
    assert any(not v.egress.allowed for v in denied)
    assert any(v.ingress.allowed and not v.egress.allowed for v in denied)
    # Every case whose policies isolate some pod denies something.
    for c, vs in zip(cases, verdicts, strict=True):
        if any(v.ingress.selecting or v.egress.selecting for v in vs):
            assert any(v.ingress.allowing or v.egress.allowing or not v.allowed for v in vs), c.name


def _departs_from_apimachinery(
    selector: Mapping[str, Any] | None, objects: Sequence[Mapping[str, str]]
) -> bool:
    """Where cyclonus's selector matcher answers otherwise: NotIn, and matchLabels with an
    empty value, on an object that lacks the key."""
    if not selector:
        return False
    keys = [r["key"] for r in selector.get("matchExpressions") or () if r["operator"] == "NotIn"]
    keys += [k for k, v in (selector.get("matchLabels") or {}).items() if v == ""]
    return any(k not in labels for k in keys for labels in objects)


def _case_departs(cluster: ClusterSpec, policies: Sequence[Mapping[str, Any]]) -> bool:
    pods = [p.labels for p in cluster.pods]
    namespaces = [
        dict(ns.labels) | {"kubernetes.io/metadata.name": ns.name} for ns in cluster.namespaces
    ]
    for p in policies:
        s = p["spec"]
        if _departs_from_apimachinery(s.get("podSelector"), pods):
            return True
        for rule in [*(s.get("ingress") or ()), *(s.get("egress") or ())]:
            for peer in [*(rule.get("from") or ()), *(rule.get("to") or ())]:
                if _departs_from_apimachinery(peer.get("podSelector"), pods):
                    return True
                if _departs_from_apimachinery(peer.get("namespaceSelector"), namespaces):
                    return True
    return False


def test_selectors_agree_with_cyclonus_but_where_it_departs(
    cluster: ClusterSpec, cases: list[corpus.Case], verdicts: list[list[Verdict]]
) -> None:
    """The oracle evaluates selectors with apimachinery and hands cyclonus the result; let
    cyclonus evaluate them itself and every verdict must be the same, but in cases with a
    selector on which the two matchers are known to differ."""
    raw = expected_many(cluster, [(c.policies, c.probes) for c in cases], cyclonus_selectors=True)
    differing = set()
    for c, ours, theirs in zip(cases, verdicts, raw, strict=True):
        if ours != theirs:
            differing.add(c.name)
            assert _case_departs(cluster, c.policies), c.name
    assert differing, "no case tells apimachinery's selectors from cyclonus's"


def test_other_addresses(cases: list[corpus.Case]) -> None:
    """The real cluster's pods have IPAM's addresses, maybe one family and one node: the
    corpus built on them is still valid, and only its ipBlocks change."""
    ips = {f"{ns}/{name}": (f"10.88.0.{i + 2}",) for i, (ns, name, *_) in enumerate(corpus.LAYOUT)}
    single = corpus.cluster(ips=ips, externals=("203.0.113.5", "203.0.113.9"))
    other = corpus.generate(single)
    assert {c.name for c in cases if "ipblock" not in c.name} <= {c.name for c in other}
    assert not any(p.family == 6 for c in other for p in c.probes)
    results = expected_many(single, [(c.policies, c.probes) for c in other])
    assert len(results) == len(other)
