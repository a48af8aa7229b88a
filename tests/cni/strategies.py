"""Hypothesis strategies for CNI results, shaped to what each version family can carry."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Literal

from hypothesis import strategies as st

from loxicni.cni.types import DNS, Interface, IPConfig, IPInterface, IPNetwork, Result, Route

MODERN_1_0 = ("1.0.0", "0.4.0", "0.3.1", "0.3.0")  # same fields, 0.x adds ips[].version
LEGACY = ("0.1.0", "0.2.0")

text = st.text(max_size=12)
Family = Literal[4, 6]

nonneg = st.integers(min_value=0, max_value=2**31 - 1)
positive = st.integers(min_value=1, max_value=2**31 - 1)


def ip_interfaces(family: Family) -> st.SearchStrategy[IPInterface]:
    bits = 32 if family == 4 else 128
    return st.tuples(st.ip_addresses(v=family), st.integers(0, bits)).map(ipaddress.ip_interface)


def ip_networks(family: Family) -> st.SearchStrategy[IPNetwork]:
    return ip_interfaces(family).map(lambda i: i.network)


def any_family() -> st.SearchStrategy[Family]:
    return st.sampled_from((4, 6))


@st.composite
def interfaces(draw: st.DrawFn, extended: bool) -> Interface:
    return Interface(
        name=draw(text),
        mac=draw(text),
        mtu=draw(st.none() | positive) if extended else None,
        sandbox=draw(text),
        socket_path=draw(text) if extended else "",
        pci_id=draw(text) if extended else "",
    )


@st.composite
def routes(draw: st.DrawFn, family: Family, extended: bool) -> Route:
    route = Route(
        dst=draw(ip_networks(family)),
        gw=draw(st.none() | st.ip_addresses(v=family)),
    )
    if extended:
        route = replace(
            route,
            mtu=draw(st.none() | positive),
            advmss=draw(st.none() | positive),
            priority=draw(st.none() | positive),
            table=draw(st.none() | nonneg),
            scope=draw(st.none() | st.integers(0, 255)),
        )
    return route


dns_values = st.builds(
    DNS,
    nameservers=st.lists(text, max_size=3),
    domain=text,
    search=st.lists(text, max_size=3),
    options=st.lists(text, max_size=3),
)


@st.composite
def modern_results(draw: st.DrawFn, extended: bool) -> Result:
    """Everything a 1.x/0.3+ result carries; with ``extended``, the 1.1.0 fields too."""
    ifaces = draw(st.lists(interfaces(extended), max_size=3))
    index = st.none() | st.integers(0, len(ifaces) - 1) if ifaces else st.none()
    ips = []
    for _ in range(draw(st.integers(0, 3))):
        family = draw(any_family())
        ips.append(
            IPConfig(
                address=draw(ip_interfaces(family)),
                gateway=draw(st.none() | st.ip_addresses(v=family)),
                interface=draw(index),
            )
        )
    rts = [draw(routes(draw(any_family()), extended)) for _ in range(draw(st.integers(0, 3)))]
    return Result(interfaces=ifaces, ips=ips, routes=rts, dns=draw(dns_values))


@st.composite
def legacy_results(draw: st.DrawFn) -> Result:
    """What 0.1.0/0.2.0 can express: one address per family, v4 first, routes by family."""
    families: tuple[Family, ...] = draw(st.sampled_from(((4,), (6,), (4, 6))))
    ips = [
        IPConfig(address=draw(ip_interfaces(f)), gateway=draw(st.none() | st.ip_addresses(v=f)))
        for f in families
    ]
    rts = [r for f in families for r in draw(st.lists(routes(f, extended=False), max_size=3))]
    return Result(ips=ips, routes=rts, dns=draw(dns_values))


def results_for(version: str) -> st.SearchStrategy[Result]:
    """Results that ``version`` represents without loss, stamped with that version."""
    base = legacy_results() if version in LEGACY else modern_results(version == "1.1.0")
    return base.map(lambda r: replace(r, cni_version=version))
