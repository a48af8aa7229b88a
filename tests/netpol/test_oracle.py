"""The oracle against answers known from the Kubernetes documentation and the upstream e2e
suite: if these come out right, the oracle is wired correctly (input, defaulting, selectors,
ports, ipBlock, both directions) and the corpus's truths can be trusted. No cluster needed.
"""

from __future__ import annotations

from typing import Any

import pytest

from .oracle import (
    ClusterSpec,
    ContainerPort,
    External,
    Namespace,
    OracleError,
    Pod,
    PodRef,
    Probe,
    Protocol,
    Verdict,
    _find_binary,
    expected,
    oracle_binary,
)

CP = ContainerPort


def _pod(ns: str, name: str, labels: dict[str, str], n: int, *ports: ContainerPort) -> Pod:
    return Pod(ns, name, labels, (f"10.1.0.{n}", f"fd00:1::{n}"), ports)


# The documentation's cast: a db, a frontend, clients in other namespaces, and outside
# addresses on both sides of the documentation's ipBlock except.
CLUSTER = ClusterSpec(
    namespaces=(
        Namespace("default"),
        Namespace("myproject", {"project": "myproject"}),
        Namespace("other", {"user": "alice"}),
    ),
    pods=(
        _pod("default", "db", {"role": "db"}, 10, CP(6379, "TCP", "redis"), CP(5978, "TCP")),
        _pod("default", "frontend", {"role": "frontend"}, 11, CP(80, "TCP", "http")),
        _pod(
            "default",
            "web",
            {"app": "web"},
            12,
            CP(80, "TCP", "http"),
            CP(81, "TCP", "serve-81-tcp"),
            CP(53, "UDP", "dns"),
            CP(9000, "SCTP", "sctp"),
        ),
        _pod("default", "api", {"app": "api", "tier": "backend"}, 13, CP(8080, "TCP", "http")),
        _pod("default", "client", {"role": "client"}, 14),
        _pod("myproject", "client", {"role": "client"}, 20),
        _pod("other", "client", {"role": "client"}, 30),
    ),
    externals=("172.17.0.5", "172.17.1.5", "10.0.0.5", "2001:db8::5", "2001:db8:1::5"),
)


def np(name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def probe(
    src: str, dst: str, port: int | str, protocol: Protocol = "TCP", family: int = 4
) -> Probe:
    """ "ns/name" is a pod, anything else an outside address."""

    def endpoint(s: str) -> PodRef | External:
        if "/" in s:
            ns, name = s.split("/")
            return PodRef(ns, name)
        return External(s)

    return Probe(endpoint(src), endpoint(dst), port, protocol, 6 if family == 6 else 4)


def verdicts(policies: list[dict[str, Any]], *probes: Probe) -> list[Verdict]:
    return expected(CLUSTER, policies, list(probes))


def allowed(policies: list[dict[str, Any]], *probes: Probe) -> list[bool]:
    return [v.allowed for v in verdicts(policies, *probes)]


DENY_INGRESS = np("default-deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})
DENY_EGRESS = np("default-deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})


def test_no_policy_allows_everything() -> None:
    assert (
        allowed(
            [],
            probe("myproject/client", "default/db", 6379),
            probe("172.17.1.5", "default/web", 80),
            probe("default/web", "10.0.0.5", 53, "UDP"),
            probe("default/web", "default/web", 9000, "SCTP"),
        )
        == [True] * 4
    )


def test_default_deny_ingress() -> None:
    v = verdicts(
        [DENY_INGRESS],
        probe("myproject/client", "default/web", 80),
        probe("default/frontend", "default/web", 80),  # the same namespace too
        probe("172.17.0.5", "default/web", 80),
        probe("default/web", "myproject/client", 80),  # egress is untouched
        probe("myproject/client", "other/client", 80),  # other namespaces are untouched
    )
    assert [x.allowed for x in v] == [False, False, False, True, True]
    assert v[0].ingress.selecting == ("default/default-deny-ingress",)
    assert v[0].ingress.allowing == ()
    assert v[0].egress.allowed and v[0].egress.selecting == ()


def test_allow_all_ingress_wins_over_deny_all() -> None:
    allow_all = np("allow-all-ingress", {"podSelector": {}, "ingress": [{}]})
    v = verdicts([DENY_INGRESS, allow_all], probe("172.17.1.5", "default/db", 5978))
    assert v[0].allowed
    assert v[0].ingress.allowing == ("default/allow-all-ingress",)


def test_default_deny_egress() -> None:
    assert allowed(
        [DENY_EGRESS],
        probe("default/web", "myproject/client", 80),
        probe("default/web", "10.0.0.5", 53, "UDP"),
        probe("default/web", "default/db", 6379),
        probe("myproject/client", "default/web", 80),  # ingress is untouched
    ) == [False, False, False, True]


# The example policy of the NetworkPolicy concept page.
DOCS_EXAMPLE = np(
    "test-network-policy",
    {
        "podSelector": {"matchLabels": {"role": "db"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                    {"podSelector": {"matchLabels": {"role": "frontend"}}},
                ],
                "ports": [{"protocol": "TCP", "port": 6379}],
            }
        ],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                "ports": [{"protocol": "TCP", "port": 5978}],
            }
        ],
    },
)


def test_documentation_example() -> None:
    assert allowed(
        [DOCS_EXAMPLE],
        probe("172.17.0.5", "default/db", 6379),
        probe("172.17.1.5", "default/db", 6379),  # in except
        probe("myproject/client", "default/db", 6379),
        probe("myproject/client", "default/db", 5978),  # not the port
        probe("default/frontend", "default/db", 6379),
        probe("default/frontend", "default/db", 6379, "UDP"),  # not the protocol
        probe("other/client", "default/db", 6379),
        probe("default/web", "default/db", 6379),  # not role=frontend
        probe("default/db", "10.0.0.5", 5978),
        probe("default/db", "10.0.0.5", 6379),
        probe("default/db", "default/frontend", 80),  # egress isolated
        probe("default/frontend", "myproject/client", 80),  # not selected
    ) == [True, False, True, False, True, False, False, False, True, False, False, True]


def test_namespace_and_pod_selector_in_one_peer_or_two() -> None:
    both = {"namespaceSelector": {"matchLabels": {"user": "alice"}}}
    both["podSelector"] = {"matchLabels": {"role": "client"}}
    either = [
        {"namespaceSelector": {"matchLabels": {"user": "alice"}}},
        {"podSelector": {"matchLabels": {"role": "client"}}},
    ]
    probes = (
        probe("other/client", "default/web", 80),
        probe("default/client", "default/web", 80),
        probe("myproject/client", "default/web", 80),
    )
    and_ = np(
        "and", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [both]}]}
    )
    or_ = np("or", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": either}]})
    assert allowed([and_], *probes) == [True, False, False]
    assert allowed([or_], *probes) == [True, True, False]


def test_end_port_range() -> None:
    policy = np(
        "multi-port-egress",
        {
            "podSelector": {"matchLabels": {"role": "db"}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                    "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}],
                }
            ],
        },
    )
    assert allowed(
        [policy],
        probe("default/db", "10.0.0.5", 32000),
        probe("default/db", "10.0.0.5", 32400),
        probe("default/db", "10.0.0.5", 32768),
        probe("default/db", "10.0.0.5", 31999),
        probe("default/db", "10.0.0.5", 32769),
        probe("default/db", "10.0.0.5", 32000, "UDP"),
    ) == [True, True, True, False, False, False]


def test_named_port() -> None:
    policy = np(
        "allow-81",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"ports": [{"port": "serve-81-tcp", "protocol": "TCP"}]}],
        },
    )
    v = verdicts(
        [policy],
        probe("myproject/client", "default/web", 81),
        probe("myproject/client", "default/web", "serve-81-tcp"),
        probe("myproject/client", "default/web", 80),
    )
    assert [x.allowed for x in v] == [True, True, False]
    assert (v[0].port, v[0].port_name) == (81, "serve-81-tcp")
    assert (v[1].port, v[1].port_name) == (81, "serve-81-tcp")


def test_named_port_is_the_destination_pods() -> None:
    policy = np(
        "egress-http",
        {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]},
        namespace="myproject",
    )
    assert allowed(
        [policy],
        probe("myproject/client", "default/web", 80),  # web's http
        probe("myproject/client", "default/api", 8080),  # api's http
        probe("myproject/client", "default/web", 8080),
        probe("myproject/client", "default/api", 80),
        probe("myproject/client", "10.0.0.5", 80),  # outside, no name to resolve
    ) == [True, True, False, False, False]


def test_named_port_is_per_protocol() -> None:
    def allows(port: dict[str, Any]) -> list[bool]:
        policy = np("p", {"podSelector": {}, "ingress": [{"ports": [port]}]})
        return allowed(
            [policy],
            probe("other/client", "default/web", 53, "UDP"),
            probe("other/client", "default/web", 53, "TCP"),
        )

    assert allows({"port": "dns"}) == [False, False]  # protocol defaults to TCP
    assert allows({"port": "dns", "protocol": "UDP"}) == [True, False]


def test_egress_default_deny_with_dns_allowed() -> None:
    dns = np(
        "allow-dns",
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"namespaceSelector": {}}],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
                }
            ],
        },
        namespace="myproject",
    )
    deny = np("default-deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]}, "myproject")
    v = verdicts(
        [deny, dns],
        probe("myproject/client", "default/web", 53, "UDP"),
        probe("myproject/client", "other/client", 53, "TCP"),
        probe("myproject/client", "default/web", 80),
        probe("myproject/client", "10.0.0.5", 53, "UDP"),  # not in any namespace
        probe("default/web", "myproject/client", 80),  # its ingress is untouched
    )
    assert [x.allowed for x in v] == [True, True, False, False, True]
    assert v[0].egress.selecting == ("myproject/allow-dns", "myproject/default-deny-egress")
    assert v[0].egress.allowing == ("myproject/allow-dns",)


def test_pod_selected_by_two_policies() -> None:
    from_myproject = np(
        "from-myproject-80",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"project": "myproject"}}}],
                    "ports": [{"port": 80}],
                }
            ],
        },
    )
    from_other = np(
        "from-other-81",
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"user": "alice"}}}],
                    "ports": [{"port": 81}],
                }
            ],
        },
    )
    v = verdicts(
        [from_myproject, from_other],
        probe("myproject/client", "default/web", 80),
        probe("myproject/client", "default/web", 81),
        probe("other/client", "default/web", 81),
        probe("other/client", "default/web", 80),
        probe("myproject/client", "default/db", 80),  # db: only from-other-81 selects it
    )
    assert [x.allowed for x in v] == [True, False, True, False, False]
    both = ("default/from-myproject-80", "default/from-other-81")
    assert v[0].ingress.selecting == both
    assert v[0].ingress.allowing == ("default/from-myproject-80",)
    assert v[2].ingress.allowing == ("default/from-other-81",)
    assert v[4].ingress.selecting == ("default/from-other-81",)


def test_policy_types_defaulting() -> None:
    # No policyTypes and egress rules: Ingress and Egress, so ingress is denied too.
    egress_only = np(
        "egress-only",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"project": "myproject"}}}]}],
        },
    )
    assert allowed(
        [egress_only],
        probe("default/frontend", "default/web", 80),
        probe("default/web", "myproject/client", 80),
        probe("default/web", "other/client", 80),
    ) == [False, True, False]
    # policyTypes Egress: the ingress rules are ignored and ingress stays open.
    typed = np(
        "typed",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "db"}}}]}],
        },
    )
    assert allowed(
        [typed],
        probe("default/frontend", "default/web", 80),
        probe("default/web", "default/frontend", 80),
    ) == [True, False]


def test_both_ends_must_allow() -> None:
    deny = np("default-deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]}, "myproject")
    allow = np("allow-all-ingress", {"podSelector": {}, "ingress": [{}]})
    (v,) = verdicts([deny, allow], probe("myproject/client", "default/web", 80))
    assert not v.allowed
    assert v.ingress.allowed and not v.egress.allowed


def test_sctp_is_not_tcp() -> None:
    sctp = np(
        "allow-sctp",
        {"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP", "port": 9000}]}]},
    )
    assert allowed(
        [sctp],
        probe("other/client", "default/web", 9000, "SCTP"),
        probe("other/client", "default/web", 9000, "TCP"),
        probe("other/client", "default/web", 9000, "UDP"),
    ) == [True, False, False]
    any_sctp = np("any-sctp", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP"}]}]})
    assert allowed(
        [any_sctp],
        probe("other/client", "default/web", 9000, "SCTP"),
        probe("other/client", "default/web", "sctp", "SCTP"),
        probe("other/client", "default/web", 80, "TCP"),
    ) == [True, True, False]


def test_ipblock_v6_except() -> None:
    block = {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}
    policy = np("v6", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": block}]}]})
    assert allowed(
        [policy],
        probe("2001:db8::5", "default/web", 80, family=6),
        probe("2001:db8:1::5", "default/web", 80, family=6),
        probe("172.17.0.5", "default/web", 80),
        probe("other/client", "default/web", 80, family=6),
    ) == [True, False, False, False]


def test_ipblock_matches_pod_addresses() -> None:
    web = CLUSTER.pod("default/web")
    policy = np(
        "to-web",
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": f"{web.ip(4)}/32"}}]}],
        },
        namespace="myproject",
    )
    assert allowed(
        [policy],
        probe("myproject/client", "default/web", 80),
        probe("myproject/client", "default/web", 80, family=6),  # the other family
        probe("myproject/client", "default/frontend", 80),
    ) == [True, False, False]


def test_not_in_selects_pods_without_the_key() -> None:
    # apimachinery: NotIn (and DoesNotExist) match an object without the key. Cyclonus's own
    # selector matcher does not; the oracle uses apimachinery's.
    not_backend = {"key": "tier", "operator": "NotIn", "values": ["backend"]}
    policy = np(
        "not-backend",
        {"podSelector": {"matchExpressions": [not_backend]}, "policyTypes": ["Ingress"]},
    )
    probes = [probe("other/client", "default/web", 80), probe("other/client", "default/api", 8080)]
    assert [v.allowed for v in expected(CLUSTER, [policy], probes)] == [False, True]
    cyclonus = expected(CLUSTER, [policy], probes, cyclonus_selectors=True)
    assert [v.allowed for v in cyclonus] == [True, True]


def test_namespace_name_label_is_implicit() -> None:
    named = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "myproject"}}}
    policy = np("by-name", {"podSelector": {}, "ingress": [{"from": [named]}]})
    assert allowed(
        [policy],
        probe("myproject/client", "default/web", 80),
        probe("other/client", "default/web", 80),
    ) == [True, False]


def test_loopback_is_flagged() -> None:
    (v,) = verdicts([DENY_INGRESS], probe("default/web", "default/web", 80))
    assert v.loopback and not v.allowed
    assert (v.source_ip, v.destination_ip) == ("10.1.0.12", "10.1.0.12")


def _spec_with(**fields: Any) -> dict[str, Any]:
    return {"podSelector": {}} | fields


NET = {"cidr": "10.0.0.0/24"}
OUTSIDE_EXCEPT = {"cidr": "10.0.0.0/24", "except": ["10.1.0.0/24"]}


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            np("p", _spec_with(ingress=[{"ports": [{"port": "http", "endPort": 90}]}])),
            "may not be specified when `port` is non-numeric",
        ),
        (
            np("p", _spec_with(ingress=[{"ports": [{"port": 90, "endPort": 80}]}])),
            "must be greater than or equal to `port`",
        ),
        (
            np("p", _spec_with(ingress=[{"from": [{"ipBlock": OUTSIDE_EXCEPT}]}])),
            "must be a strict subset of `cidr`",
        ),
        (
            np("p", _spec_with(ingress=[{"from": [{"ipBlock": NET, "podSelector": {}}]}])),
            "may not specify both ipBlock and another peer",
        ),
        (
            np("p", _spec_with(ingress=[{"ports": [{"protocol": "ICMP"}]}])),
            "Unsupported value",
        ),
        (
            np("p", _spec_with(podSelector={"matchExpressions": [{"key": "a", "operator": "In"}]})),
            "must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (np("p", _spec_with(policyTypes=["Both"])), "Unsupported value"),
        (np("p", {"podselector": {}}), 'unknown field "spec.podselector"'),
        (np("p", {"podSelector": {}}, namespace="nowhere"), 'namespace "nowhere" not described'),
        ({"metadata": {"name": "p"}, "spec": {"podSelector": {}}}, "metadata.namespace"),
    ],
)  # fmt: skip
def test_refuses_what_the_api_server_refuses(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(OracleError, match=message.replace("(", r"\(").replace("`", ".")):
        expected(CLUSTER, [policy], [])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (probe("other/client", "default/web", "nope"), 'no TCP port named "nope"'),
        (probe("other/client", "default/web", "dns", "TCP"), 'no TCP port named "dns"'),
        (probe("other/nobody", "default/web", 80), 'pod "other/nobody" not described'),
        (probe("172.17.0.5", "default/web", 80, family=6), "is not IPv6"),
        (probe("172.17.0.5", "10.0.0.5", 80), "source or destination must be a pod"),
        (probe("10.1.0.12", "default/db", 80), "name the pod"),
    ],
)
def test_refuses_probes_the_cluster_cannot_make(bad: Probe, message: str) -> None:
    with pytest.raises(OracleError, match=message):
        expected(CLUSTER, [], [bad])


def test_a_missing_oracle_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOXI_NETPOL_ORACLE", "/nonexistent/netpol-oracle")
    _find_binary.cache_clear()
    try:
        monkeypatch.setenv("LOXI_K8S_REQUIRED", "1")
        with pytest.raises(pytest.fail.Exception, match="oracle not built"):
            oracle_binary()
        monkeypatch.delenv("LOXI_K8S_REQUIRED")
        with pytest.raises(pytest.skip.Exception, match="oracle not built"):
            oracle_binary()
    finally:
        _find_binary.cache_clear()
