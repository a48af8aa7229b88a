from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loxicni.cni.errors import CniError, Code
from loxicni.cni.version import LATEST, SUPPORTED_VERSIONS, at_least, parse


def test_constants() -> None:
    assert SUPPORTED_VERSIONS == ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    assert LATEST == "1.1.0"
    assert SUPPORTED_VERSIONS[-1] == LATEST


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.3.1", (0, 3, 1)),
        ("1.1.0", (1, 1, 0)),
        ("1.1", (1, 1, 0)),
        ("2", (2, 0, 0)),
        ("0.10.0", (0, 10, 0)),
    ],
)
def test_parse(text: str, parsed: tuple[int, int, int]) -> None:
    assert parse(text) == parsed


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "1.",
        ".1",
        "1..0",
        "1.0.0.0",
        "v1.0.0",
        "1.0.0-rc1",
        "+1.0.0",
        " 1.0.0",
        "1.0.0\n",
        "-1.0.0",
        "1_0.0.0",
        "\u0661.\u0660.\u0660",  # Arabic-Indic digits: int() would take them
        "a.b.c",
    ],
)
def test_parse_garbage_is_error_1(garbage: str) -> None:
    with pytest.raises(CniError) as exc:
        parse(garbage)
    assert exc.value.code == Code.INCOMPATIBLE_VERSION


def test_parse_non_string_is_error_1() -> None:
    with pytest.raises(CniError) as exc:
        parse(1.1)  # type: ignore[arg-type]
    assert exc.value.code == Code.INCOMPATIBLE_VERSION


@pytest.mark.parametrize(
    ("v", "minimum", "expected"),
    [
        ("0.4.0", "0.4.0", True),
        ("0.3.1", "0.4.0", False),
        ("1.0.0", "0.4.0", True),
        ("0.10.0", "0.4.0", True),  # numeric, not lexical
        ("1.0.0", "1.1.0", False),
        ("1.1.0", "1.1.0", True),
        ("1.1", "1.1.0", True),
    ],
)
def test_at_least(v: str, minimum: str, expected: bool) -> None:
    assert at_least(v, minimum) is expected


def test_at_least_garbage_is_error_1() -> None:
    with pytest.raises(CniError) as exc:
        at_least("x", "1.0.0")
    assert exc.value.code == Code.INCOMPATIBLE_VERSION


versions = st.tuples(*(st.integers(0, 1000),) * 3)


@given(versions, versions)
def test_at_least_agrees_with_tuple_order(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    sa, sb = ".".join(map(str, a)), ".".join(map(str, b))
    assert parse(sa) == a
    assert at_least(sa, sb) is (a >= b)
