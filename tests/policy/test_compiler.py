"""The NetworkPolicy model and its compilation, in Python: what the program holds, what it
decides (``interpret``), and that pod and namespace changes move set elements, not rules."""

from __future__ import annotations

from typing import Any

import pytest

from loxicni.k8s.netpol.compiler import Compiler
from loxicni.k8s.netpol.model import BadPolicy, PodView, Policy, parse_policy
from loxicni.k8s.netpol.selector import Selector
from loxicni.net import policy_table as pt
from tests.policy.interpret import allowed

NODE = "n1"


def pod(
    name: str, ns: str, ip: str, node: str = NODE, ports: tuple[tuple[str, str, int], ...] = (),
    **labels: str,
) -> PodView:  # fmt: skip
    return PodView(
        uid=f"uid-{ns}-{name}", namespace=ns, name=name, labels=tuple(sorted(labels.items())),
        node=node, ips=(ip,) if ip else (), ports=ports,
    )  # fmt: skip


def policy(ns: str, name: str, spec: dict[str, Any]) -> Policy:
    return parse_policy({"metadata": {"namespace": ns, "name": name}, "spec": spec})


@pytest.fixture
def world() -> Compiler:
    c = Compiler(NODE)
    c.set_namespace("a", {"team": "x", "kubernetes.io/metadata.name": "a"})
    c.set_namespace("b", {"team": "y", "kubernetes.io/metadata.name": "b"})
    for p in (
        pod("web", "a", "10.0.1.1", app="web"),
        pod("db", "a", "10.0.1.2", ports=(("sql", "TCP", 5432),), app="db"),
        pod("cli", "b", "10.0.2.1", app="cli"),
        pod("far", "b", "10.0.9.1", node="n2", app="web"),  # another node's pod
        pod("web6", "a", "fd00::11", app="web"),
    ):
        c.set_pod(p)
    return c


def test_policy_types_default_like_the_api_server() -> None:
    assert policy("a", "p", {"podSelector": {}}).egress is None
    p = policy("a", "p", {"podSelector": {}, "egress": [{}]})
    assert p.ingress == () and p.egress is not None
    assert policy("a", "p", {"podSelector": {}, "egress": []}).egress is None
    p = policy("a", "p", {"podSelector": {}, "policyTypes": ["Egress"]})
    assert p.ingress is None and p.egress == ()
    with pytest.raises(BadPolicy):
        policy("a", "p", {"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]})
    port = policy("a", "p", {"ingress": [{"ports": [{"port": 80, "endPort": 90}]}]})
    assert port.ingress is not None and port.ingress[0].ports[0].protocol == "TCP"


def test_selector_expressions() -> None:
    sel = Selector.parse(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "old", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["z"]},
            ],
        }
    )
    assert sel.matches({"app": "web", "tier": "a"})
    assert sel.matches({"app": "web", "tier": "b", "zone": "q"})
    assert not sel.matches({"app": "web", "tier": "c"})
    assert not sel.matches({"app": "web", "tier": "a", "old": ""})
    assert not sel.matches({"app": "web", "tier": "a", "zone": "z"})
    assert Selector.parse({}).matches({"any": "thing"})


def test_isolation_and_peers(world: Compiler) -> None:
    world.set_policy(
        policy(
            "a", "db-from-web",
            {"podSelector": {"matchLabels": {"app": "db"}},
             "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                          "ports": [{"port": "sql"}]}]},
        )
    )  # fmt: skip
    prog = world.program()
    # only this node's pods are filtered; db is isolated for ingress only
    assert {str(a) for a in prog.pods} == {"10.0.1.1", "10.0.1.2", "10.0.2.1", "fd00::11"}
    db = prog.pods[next(a for a in prog.pods if str(a) == "10.0.1.2")]
    assert (db.ingress, db.egress) == (True, False)
    assert allowed(prog, "10.0.1.1", "10.0.1.2", "tcp", 5432)
    assert not allowed(prog, "10.0.1.1", "10.0.1.2", "tcp", 5433)  # not the named port
    assert not allowed(prog, "10.0.1.1", "10.0.1.2", "udp", 5432)
    assert not allowed(prog, "10.0.9.1", "10.0.1.2", "tcp", 5432)  # app=web but namespace b
    assert not allowed(prog, "10.0.2.1", "10.0.1.2", "tcp", 5432)
    assert allowed(prog, "10.0.1.2", "10.0.2.1", "udp", 53)  # db's egress is open
    assert allowed(prog, "10.0.1.2", "10.0.1.2", "tcp", 1)  # itself
    assert world.selected_by("uid-a-db") == (["db-from-web"], [])


def test_namespace_selector_and_both(world: Compiler) -> None:
    world.set_policy(
        policy(
            "b", "cli-out",
            {"podSelector": {"matchLabels": {"app": "cli"}}, "policyTypes": ["Egress"],
             "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "x"}},
                                 "podSelector": {"matchLabels": {"app": "db"}}}]},
                        {"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}],
                         "ports": [{"protocol": "UDP", "port": 53, "endPort": 60}]}]},
        )
    )  # fmt: skip
    prog = world.program()
    assert allowed(prog, "10.0.2.1", "10.0.1.2", "sctp", 9)  # db in a team=x namespace
    assert not allowed(prog, "10.0.2.1", "10.0.1.1", "tcp", 80)
    assert allowed(prog, "10.0.2.1", "10.0.9.1", "udp", 60)  # the block, its range
    assert not allowed(prog, "10.0.2.1", "10.0.9.1", "udp", 61)
    assert not allowed(prog, "10.0.2.1", "10.0.1.1", "udp", 53)  # the exception
    # the namespace changes its labels: db is no peer any more, by an element change only
    before = world.program()
    world.set_namespace("a", {"team": "z"})
    after = world.program()
    assert not allowed(after, "10.0.2.1", "10.0.1.2", "sctp", 9)
    script = pt.render_update(before, after)
    assert script and all(" element " in line for line in script.splitlines())


def test_a_label_change_moves_elements_only(world: Compiler) -> None:
    for i in range(20):
        world.set_policy(
            policy(
                "a", f"p{i}",
                {"podSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                       {"namespaceSelector": {}}],
                              "ports": [{"port": 1000 + i}]}]},
            )
        )  # fmt: skip
    before = world.program()
    # One selector is shared by every policy using it: two sets per family, not forty.
    assert len(before.address_sets) == 2 * 3  # targets, app=web in a, every pod
    world.set_pod(pod("cli", "b", "10.0.2.1", app="web"))  # no namespace change: still not a
    world.set_pod(pod("web", "a", "10.0.1.1", app="db"))  # web becomes a db
    after = world.program()
    script = pt.render_update(before, after)
    lines = script.splitlines()
    assert all(" element " in line for line in lines), script
    # targets set gains web; the app=web set loses it; web becomes isolated
    assert len(lines) == 3, script
    assert world.selected_by("uid-a-web")[0] == sorted(f"p{i}" for i in range(20))


def test_local_addresses_before_the_status(world: Compiler) -> None:
    world.set_policy(policy("a", "deny", {"podSelector": {}}))
    fresh = pod("new", "a", "", app="x")
    world.set_pod(fresh)
    assert "10.0.1.9" not in {str(a) for a in world.program().pods}
    world.set_local_addresses(fresh.uid, ("10.0.1.9",))
    prog = world.program()
    assert not allowed(prog, "10.0.1.1", "10.0.1.9", "tcp", 80)
    world.set_local_addresses(fresh.uid, ())
    assert "10.0.1.9" not in {str(a) for a in world.program().pods}


def test_ipv6_rules_only_for_ipv6_blocks(world: Compiler) -> None:
    world.set_policy(
        policy("a", "v6", {"podSelector": {"matchLabels": {"app": "web"}},
                           "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/64"}}]}]})
    )  # fmt: skip
    prog = world.program()
    chains = {c.family: c for c in prog.policies.values()}
    assert chains[4].allows == () and len(chains[6].allows) == 1
    assert not allowed(prog, "10.0.2.1", "10.0.1.1", "tcp", 80)  # v4 web: isolated, no allow
    world.set_pod(pod("cli6", "b", "fd00::21", app="cli"))
    assert allowed(world.program(), "fd00::21", "fd00::11", "tcp", 80)


def test_removing_everything_leaves_an_empty_program(world: Compiler) -> None:
    spec = {"podSelector": {}, "egress": [{"ports": [{"port": "sql"}]}]}
    world.set_policy(policy("a", "x", spec))
    assert world.program().port_sets
    world.remove_policy("a/x")
    prog = world.program()
    assert not prog.address_sets and not prog.port_sets and not prog.policies
    assert not any(p.ingress or p.egress for p in prog.pods.values())
