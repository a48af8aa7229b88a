"""Request parsing: every validation rule with the error code it must produce."""

from __future__ import annotations

import json
import re
import string
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from loxicni.cni.errors import CniError, Code
from loxicni.cni.request import (
    Request,
    RequestError,
    parse_cni_args,
    parse_request,
    validate_container_id,
    validate_ifname,
)
from loxicni.cni.version import SUPPORTED_VERSIONS

KNOWN = frozenset({"K8S_POD_NAME", "K8S_POD_NAMESPACE", "IP"})
CONF = {"cniVersion": "1.1.0", "name": "pods", "type": "loxi-cni"}
STDIN = json.dumps(CONF).encode()


def env(command: str = "ADD", **overrides: str | None) -> dict[str, str]:
    """A complete, valid environment for ``command``; ``None`` removes a variable."""
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/var/run/netns/pod",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    for k, v in overrides.items():
        if v is None:
            base.pop(k, None)
    return base


def parse(e: dict[str, str], stdin: bytes = STDIN, known: frozenset[str] = KNOWN) -> Request:
    return parse_request(e, stdin, known)


def error(e: dict[str, str], stdin: bytes = STDIN, known: frozenset[str] = KNOWN) -> CniError:
    with pytest.raises(CniError) as exc:
        parse_request(e, stdin, known)
    return exc.value


def conf(**fields: Any) -> bytes:
    return json.dumps({**CONF, **fields}).encode()


# --------------------------------------------------------------------------- happy paths


def test_add_request_fields() -> None:
    e = env(CNI_ARGS="K8S_POD_NAME=web;IP=10.0.0.5", CNI_PATH="/opt/cni/bin::/usr/lib/cni:")
    req = parse(e)
    assert req == Request(
        command="ADD",
        container_id="abc123",
        netns="/var/run/netns/pod",
        ifname="eth0",
        args=(("K8S_POD_NAME", "web"), ("IP", "10.0.0.5")),
        path=("/opt/cni/bin", "/usr/lib/cni"),
        config=CONF,
        config_bytes=STDIN,
        cni_version="1.1.0",
    )


def test_config_bytes_are_the_raw_stdin() -> None:
    raw = b'{ "cniVersion" : "1.0.0",\n "name": "x" }'
    assert parse(env(), raw).config_bytes is raw


def test_del_allows_missing_netns() -> None:
    req = parse(env("DEL", CNI_NETNS=None))
    assert req.netns == ""
    assert req.container_id == "abc123"


def test_del_keeps_netns_when_given() -> None:
    assert parse(env("DEL")).netns == "/var/run/netns/pod"


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_status_need_only_path(command: str) -> None:
    e = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
    req = parse(e)
    assert (req.command, req.container_id, req.netns, req.ifname) == (command, "", "", "")
    assert req.path == ("/opt/cni/bin",)


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_status_ignore_attachment_variables(command: str) -> None:
    req = parse(env(command, CNI_CONTAINERID="-bad-", CNI_IFNAME="a/b"))
    assert (req.container_id, req.netns, req.ifname) == ("", "", "")


def test_version_needs_nothing_and_accepts_empty_stdin() -> None:
    req = parse({"CNI_COMMAND": "VERSION"}, b"")
    assert req.command == "VERSION"
    assert req.config == {}
    assert req.config_bytes == b""
    assert req.args == ()


def test_version_reads_stdin_but_never_rejects_its_version() -> None:
    # A newer runtime negotiates by sending its own version; VERSION must still answer.
    req = parse({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"9.9.9"}')
    assert req.config == {"cniVersion": "9.9.9"}


def test_version_ignores_broken_attachment_env() -> None:
    req = parse({"CNI_COMMAND": "VERSION", "CNI_IFNAME": "a/b", "CNI_ARGS": "nonsense"}, b"")
    assert req.ifname == "" and req.args == ()


def test_version_with_garbage_stdin_is_decode_failure() -> None:
    assert error({"CNI_COMMAND": "VERSION"}, b"{nope").code == Code.DECODE_FAILURE


# --------------------------------------------------------------------------- CNI_COMMAND


@pytest.mark.parametrize("e", [{}, {"CNI_COMMAND": ""}])
def test_missing_command_is_error_4(e: dict[str, str]) -> None:
    err = error(e)
    assert err.code == Code.INVALID_ENV
    assert "CNI_COMMAND" in err.msg


@pytest.mark.parametrize("command", ["add", "FOO", "DELETE", " ADD"])
def test_unknown_command_is_error_4(command: str) -> None:
    err = error(env(command))
    assert err.code == Code.INVALID_ENV
    assert "unknown CNI_COMMAND" in err.msg


# --------------------------------------------------------------------------- required env


@pytest.mark.parametrize(
    ("command", "required"),
    [
        ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
        ("CHECK", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
        ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]),
        ("GC", ["CNI_PATH"]),
        ("STATUS", ["CNI_PATH"]),
    ],
)
def test_each_required_variable_missing_or_empty_is_error_4(
    command: str, required: list[str]
) -> None:
    for name in required:
        for value in (None, ""):
            err = error(env(command, **{name: value}))
            assert err.code == Code.INVALID_ENV, (name, value)
            assert err.msg == f"required env variables [{name}] missing"


def test_all_missing_variables_are_listed() -> None:
    err = error({"CNI_COMMAND": "ADD"})
    assert err.code == Code.INVALID_ENV
    assert (
        err.msg == "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
    )


def test_env_is_checked_before_stdin() -> None:
    assert error({"CNI_COMMAND": "ADD"}, b"garbage").code == Code.INVALID_ENV


# --------------------------------------------------------------------------- container ID


@pytest.mark.parametrize("cid", ["a", "0", "abc-123_4.5", "A" * 200, "k8s_POD.default-1"])
def test_valid_container_ids(cid: str) -> None:
    assert parse(env(CNI_CONTAINERID=cid)).container_id == cid


@pytest.mark.parametrize(
    "cid", ["-abc", "_abc", ".abc", "a b", "a/b", "a:b", "abc\n", "é", "a;b", "a\tb"]
)
def test_invalid_container_id_is_error_4(cid: str) -> None:
    err = error(env(CNI_CONTAINERID=cid))
    assert err.code == Code.INVALID_ENV
    assert "CNI_CONTAINERID" in err.msg


@pytest.mark.parametrize("command", ["DEL", "CHECK"])
def test_container_id_validated_for_del_and_check(command: str) -> None:
    assert error(env(command, CNI_CONTAINERID="-x")).code == Code.INVALID_ENV


ID_FIRST = string.ascii_letters + string.digits
ID_REST = ID_FIRST + "_.-"


@given(st.text(ID_FIRST, min_size=1, max_size=1), st.text(ID_REST, max_size=40))
def test_prop_container_ids_from_the_alphabet_are_accepted(first: str, rest: str) -> None:
    validate_container_id(first + rest)


@given(st.text(max_size=40), st.integers(min_value=0))
def test_prop_container_id_with_a_foreign_character_is_rejected(text: str, pos: int) -> None:
    foreign = [c for c in text if c not in ID_REST]
    assume(foreign or (text and text[0] not in ID_FIRST))
    with pytest.raises(CniError) as exc:
        validate_container_id(text)
    assert exc.value.code == Code.INVALID_ENV


@given(st.text(ID_REST, min_size=1, max_size=20), st.sampled_from("_.-"))
def test_prop_container_id_must_not_start_with_punctuation(rest: str, first: str) -> None:
    with pytest.raises(CniError):
        validate_container_id(first + rest)


# --------------------------------------------------------------------------- ifname


@pytest.mark.parametrize("name", ["eth0", "e", "a" * 15, "net1.100", "veth-x_y", "é" * 7, "..."])
def test_valid_ifnames(name: str) -> None:
    assert parse(env(CNI_IFNAME=name)).ifname == name


@pytest.mark.parametrize(
    "name",
    [
        ".",
        "..",
        "a" * 16,
        "a/b",
        "a:b",
        "a b",
        "a\tb",
        "eth0\n",
        " eth0",
        "a\u00a0b",
        "a\u2003b",
        "é" * 8,
    ],
)
def test_invalid_ifname_is_error_4(name: str) -> None:
    err = error(env(CNI_IFNAME=name))
    assert err.code == Code.INVALID_ENV
    assert "CNI_IFNAME" in err.msg


def test_ifname_validated_for_del() -> None:
    assert error(env("DEL", CNI_IFNAME="a:b")).code == Code.INVALID_ENV


def test_ifname_that_is_not_utf8_is_refused() -> None:
    """The kernel would take the bytes, but the result (JSON) cannot carry them back."""
    for name in ("\udcff" * 15, "eth\udcff", "\udcff" * 16):  # raw bytes from os.environ
        with pytest.raises(CniError, match="not valid UTF-8") as info:
            validate_ifname(name)
        assert info.value.code == Code.INVALID_ENV


def test_cni_args_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(CniError, match="CNI_ARGS is not valid UTF-8") as info:
        parse_cni_args("K8S_POD_NAME=web\udcff")
    assert info.value.code == Code.INVALID_ENV


IF_SAFE = st.characters(
    blacklist_categories=["Cs", "Zs", "Zl", "Zp", "Cc"], blacklist_characters="/:\x85"
)


@given(st.text(IF_SAFE, min_size=1, max_size=15))
def test_prop_ifname_within_rules_is_accepted(name: str) -> None:
    assume(len(name.encode()) <= 15 and name not in (".", ".."))
    validate_ifname(name)


@given(
    st.text(IF_SAFE, max_size=14), st.sampled_from("/: \t\n\r\v\f\u00a0\u2028"), st.integers(0, 14)
)
def test_prop_ifname_with_forbidden_character_is_rejected(name: str, bad: str, pos: int) -> None:
    pos = min(pos, len(name))
    with pytest.raises(CniError) as exc:
        validate_ifname(name[:pos] + bad + name[pos:])
    assert exc.value.code == Code.INVALID_ENV


@given(st.text(IF_SAFE, min_size=16, max_size=40))
def test_prop_long_ifname_is_rejected(name: str) -> None:
    with pytest.raises(CniError) as exc:
        validate_ifname(name)
    assert exc.value.code == Code.INVALID_ENV


# --------------------------------------------------------------------------- CNI_ARGS


@pytest.mark.parametrize(
    ("raw", "pairs"),
    [
        ("", ()),
        ("A=1", (("A", "1"),)),
        ("A=1;B=2", (("A", "1"), ("B", "2"))),
        ("A=b=c", (("A", "b=c"),)),
        ("A=", (("A", ""),)),
        ("A=1;A=2", (("A", "1"), ("A", "2"))),
        ("=v", (("", "v"),)),
    ],
)
def test_parse_cni_args(raw: str, pairs: tuple[tuple[str, str], ...]) -> None:
    assert parse_cni_args(raw) == pairs


@pytest.mark.parametrize("raw", ["A", "A=1;B", "A=1;", ";A=1", "A=1;;B=2", ";"])
def test_pair_without_equals_is_error_4(raw: str) -> None:
    with pytest.raises(CniError) as exc:
        parse_cni_args(raw)
    assert exc.value.code == Code.INVALID_ENV


KEY = st.text(st.characters(blacklist_characters="=;", blacklist_categories=["Cs"]), max_size=8)
VALUE = st.text(st.characters(blacklist_characters=";", blacklist_categories=["Cs"]), max_size=8)


@given(st.lists(st.tuples(KEY, VALUE), min_size=1, max_size=6))
def test_prop_cni_args_round_trip(pairs: list[tuple[str, str]]) -> None:
    raw = ";".join(f"{k}={v}" for k, v in pairs)
    assert parse_cni_args(raw) == tuple(pairs)


@given(
    st.lists(st.tuples(KEY, VALUE), max_size=4), KEY, st.lists(st.tuples(KEY, VALUE), max_size=4)
)
def test_prop_a_segment_without_equals_fails(
    before: list[tuple[str, str]], bare: str, after: list[tuple[str, str]]
) -> None:
    assume(before or after or bare)  # "" alone is the empty argument list
    parts = [f"{k}={v}" for k, v in before] + [bare] + [f"{k}={v}" for k, v in after]
    with pytest.raises(CniError) as exc:
        parse_cni_args(";".join(parts))
    assert exc.value.code == Code.INVALID_ENV


@given(st.lists(st.tuples(KEY, VALUE), min_size=1, max_size=6), KEY)
def test_prop_arg_returns_last_value(pairs: list[tuple[str, str]], key: str) -> None:
    req = Request("ADD", "c", "n", "i", tuple(pairs), (), {}, b"", "1.1.0")
    values = [v for k, v in pairs if k == key]
    assert req.arg(key) == (values[-1] if values else None)


def test_request_arg() -> None:
    req = parse(env(CNI_ARGS="IP=10.0.0.1;K8S_POD_NAME=a;IP=10.0.0.2"))
    assert req.arg("IP") == "10.0.0.2"
    assert req.arg("K8S_POD_NAME") == "a"
    assert req.arg("K8S_POD_NAMESPACE") is None


def test_unknown_arg_is_error_4_naming_it() -> None:
    err = error(env(CNI_ARGS="K8S_POD_NAME=a;FOO=1"))
    assert err.code == Code.INVALID_ENV
    assert "FOO" in err.msg


def test_arg_keys_are_case_sensitive() -> None:
    assert error(env(CNI_ARGS="k8s_pod_name=a")).code == Code.INVALID_ENV


@pytest.mark.parametrize("flag", ["1", "true", "TRUE", "True", "tRuE"])
def test_ignore_unknown_accepts_unknown_args(flag: str) -> None:
    req = parse(env(CNI_ARGS=f"IgnoreUnknown={flag};FOO=1;K8S_POD_NAME=a"))
    assert req.arg("FOO") == "1"


def test_ignore_unknown_may_come_after_the_unknown_key() -> None:
    assert parse(env(CNI_ARGS="FOO=1;IgnoreUnknown=1")).arg("FOO") == "1"


@pytest.mark.parametrize("flag", ["0", "false", "FALSE"])
def test_ignore_unknown_false_still_rejects(flag: str) -> None:
    assert error(env(CNI_ARGS=f"IgnoreUnknown={flag};FOO=1")).code == Code.INVALID_ENV


def test_ignore_unknown_alone_is_fine() -> None:
    assert parse(env(CNI_ARGS="IgnoreUnknown=0")).args == (("IgnoreUnknown", "0"),)


@pytest.mark.parametrize("flag", ["yes", "", "2", "on"])
def test_ignore_unknown_with_a_non_boolean_is_error_4(flag: str) -> None:
    err = error(env(CNI_ARGS=f"IgnoreUnknown={flag}"))
    assert err.code == Code.INVALID_ENV
    assert "IgnoreUnknown" in err.msg


def test_last_ignore_unknown_wins() -> None:
    assert error(env(CNI_ARGS="IgnoreUnknown=1;IgnoreUnknown=0;FOO=1")).code == Code.INVALID_ENV


def test_bad_pair_in_request_is_error_4() -> None:
    assert error(env(CNI_ARGS="K8S_POD_NAME")).code == Code.INVALID_ENV


# --------------------------------------------------------------------------- stdin


@pytest.mark.parametrize(
    "stdin",
    [
        b"",
        b"   ",
        b"{",
        b"not json",
        b"[]",
        b'"string"',
        b"42",
        b"null",
        b'{"cniVersion": NaN}',
        b'{"mtu": Infinity}',
        b"\xff\xfe\xfa",
        b"[" * 100_000,
        b'{"a":1} trailing',
    ],
)
def test_bad_stdin_is_error_6(stdin: bytes) -> None:
    assert error(env(), stdin).code == Code.DECODE_FAILURE


@pytest.mark.parametrize("command", ["DEL", "CHECK", "GC", "STATUS"])
def test_bad_stdin_is_error_6_for_every_command(command: str) -> None:
    assert error(env(command), b"{").code == Code.DECODE_FAILURE


def test_stdin_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = json.loads

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(json, "loads", counting)
    parse(env(CNI_ARGS="IgnoreUnknown=1"))
    assert calls == [STDIN]


# --------------------------------------------------------------------------- cniVersion


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_supported_version_is_accepted_for_add(version: str) -> None:
    assert parse(env(), conf(cniVersion=version)).cni_version == version


def test_absent_version_means_010() -> None:
    assert parse(env(), b'{"name": "x"}').cni_version == "0.1.0"


def test_empty_version_means_010() -> None:
    assert parse(env(), conf(cniVersion="")).cni_version == "0.1.0"


def test_null_version_means_010() -> None:
    assert parse(env(), conf(cniVersion=None)).cni_version == "0.1.0"


@pytest.mark.parametrize("version", [1.1, 1, ["1.0.0"], {"v": 1}, True])
def test_non_string_version_is_error_1(version: Any) -> None:
    err = error(env(), conf(cniVersion=version))
    assert err.code == Code.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("version", ["1.2.0", "0.5.0", "1.1", "1.0", "v1.0.0", "2.0.0", "garbage"])
def test_unsupported_version_is_error_1_naming_both_sides(version: str) -> None:
    err = error(env(), conf(cniVersion=version))
    assert err.code == Code.INCOMPATIBLE_VERSION
    assert f'"{version}"' in err.msg
    for supported in SUPPORTED_VERSIONS:
        assert supported in err.msg
    assert isinstance(err, CniError) and not isinstance(err, RequestError)


@pytest.mark.parametrize(
    ("command", "version", "allowed"),
    [
        ("CHECK", "0.1.0", False),
        ("CHECK", "0.2.0", False),
        ("CHECK", "0.3.0", False),
        ("CHECK", "0.3.1", False),
        ("CHECK", "0.4.0", True),
        ("CHECK", "1.0.0", True),
        ("CHECK", "1.1.0", True),
        ("GC", "1.0.0", False),
        ("GC", "0.4.0", False),
        ("GC", "1.1.0", True),
        ("STATUS", "1.0.0", False),
        ("STATUS", "0.1.0", False),
        ("STATUS", "1.1.0", True),
        ("ADD", "0.1.0", True),
        ("DEL", "0.1.0", True),
    ],
)
def test_command_needs_a_recent_enough_config(command: str, version: str, allowed: bool) -> None:
    e = env(command)
    if allowed:
        assert parse(e, conf(cniVersion=version)).cni_version == version
        return
    err = error(e, conf(cniVersion=version))
    assert err.code == Code.INCOMPATIBLE_VERSION
    assert err.msg == f"config version {version} does not allow {command}"


def test_check_without_version_is_too_old() -> None:
    err = error(env("CHECK"), b'{"name":"x"}')
    assert err.msg == "config version 0.1.0 does not allow CHECK"


# --------------------------------------------------------------------------- error version


@pytest.mark.parametrize(
    ("overrides", "stdin"),
    [
        ({"CNI_CONTAINERID": "-x"}, conf(cniVersion="0.4.0")),
        ({"CNI_IFNAME": "a/b"}, conf(cniVersion="0.4.0")),
        ({"CNI_ARGS": "X=1"}, conf(cniVersion="0.4.0")),
        ({"CNI_COMMAND": "CHECK"}, conf(cniVersion="0.3.1")),
    ],
)
def test_errors_after_decoding_carry_the_config_version(
    overrides: dict[str, str], stdin: bytes
) -> None:
    err = error(env(**overrides), stdin)
    assert isinstance(err, RequestError)
    assert err.config_version == json.loads(stdin)["cniVersion"]


def test_request_error_keeps_code_and_details() -> None:
    err = RequestError(CniError(Code.INVALID_ENV, "m", "d"), "0.4.0")
    assert (err.code, err.msg, err.details, err.config_version) == (4, "m", "d", "0.4.0")
    assert err.to_json("0.4.0") == {"cniVersion": "0.4.0", "code": 4, "msg": "m", "details": "d"}
    assert re.search("m", str(err))
