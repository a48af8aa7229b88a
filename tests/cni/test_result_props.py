"""Round-trip properties: encode then decode loses nothing a version can carry."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from loxicni.cni.result import result_from_json, result_to_json
from loxicni.cni.types import Result
from loxicni.cni.version import SUPPORTED_VERSIONS
from tests.cni.strategies import LEGACY, MODERN_1_0, modern_results, results_for


def over_the_wire(obj: dict[str, Any]) -> Any:
    """What the other side of a pipe would decode."""
    return json.loads(json.dumps(obj))


def strip_to_1_0(r: Result) -> Result:
    """What a 1.1.0 result keeps when written as 1.0.0 (or 0.3/0.4)."""
    return replace(
        r,
        interfaces=[replace(i, mtu=None, socket_path="", pci_id="") for i in r.interfaces],
        routes=[
            replace(x, mtu=None, advmss=None, priority=None, table=None, scope=None)
            for x in r.routes
        ],
    )


@given(st.data())
def test_lossless_within_each_version(data: st.DataObject) -> None:
    version = data.draw(st.sampled_from(SUPPORTED_VERSIONS))
    result = data.draw(results_for(version))
    assert result_from_json(over_the_wire(result_to_json(result, version))) == result


@given(modern_results(extended=True), st.sampled_from(MODERN_1_0))
def test_older_modern_versions_drop_exactly_the_110_fields(result: Result, version: str) -> None:
    decoded = result_from_json(over_the_wire(result_to_json(result, version)))
    assert decoded == replace(strip_to_1_0(result), cni_version=version)


@given(modern_results(extended=True), st.sampled_from(SUPPORTED_VERSIONS))
def test_encoding_is_a_fixed_point(result: Result, version: str) -> None:
    """Decoding then re-encoding any version's output reproduces it byte for byte."""
    if version in LEGACY and not result.ips:
        return  # not expressible in 0.1/0.2; covered by a unit test
    first = result_to_json(result, version)
    again = result_to_json(result_from_json(over_the_wire(first)), version)
    assert json.dumps(again) == json.dumps(first)


@given(modern_results(extended=True), st.sampled_from(SUPPORTED_VERSIONS))
def test_encoded_version_matches_request(result: Result, version: str) -> None:
    if version in LEGACY and not result.ips:
        return
    out = result_to_json(result, version)
    assert out["cniVersion"] == version
    assert ("ips" in out) == (version not in LEGACY and bool(result.ips))
    assert all(
        ("version" in ip) == (version in ("0.3.0", "0.3.1", "0.4.0")) for ip in out.get("ips", [])
    )


@given(modern_results(extended=True), st.sampled_from(LEGACY))
def test_legacy_keeps_first_address_per_family(result: Result, version: str) -> None:
    if not result.ips:
        return
    decoded = result_from_json(over_the_wire(result_to_json(result, version)))
    for family in (4, 6):
        wanted = [ip for ip in result.ips if ip.address.version == family][:1]
        got = [ip for ip in decoded.ips if ip.address.version == family]
        assert [(ip.address, ip.gateway) for ip in got] == [
            (ip.address, ip.gateway) for ip in wanted
        ]
        kept_routes = [r.dst for r in decoded.routes if r.dst.version == family]
        all_routes = [r.dst for r in result.routes if r.dst.version == family]
        assert kept_routes == (all_routes if wanted else [])
