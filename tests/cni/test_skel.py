"""The dispatcher: exit codes, stdout bytes, and the version spoken in errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_interface
from typing import Any

import pytest

from loxicni.cni.errors import CniError, Code
from loxicni.cni.request import Request
from loxicni.cni.result import result_to_json
from loxicni.cni.skel import run
from loxicni.cni.types import Interface, IPConfig, Result
from loxicni.cni.version import SUPPORTED_VERSIONS

KNOWN = frozenset({"K8S_POD_NAME"})
RESULT = Result(
    interfaces=[Interface(name="eth0", mac="0a:58:0a:00:00:05", sandbox="/var/run/netns/p")],
    ips=[IPConfig(ip_interface("10.0.0.5/24"), ip_address("10.0.0.1"), 0)],
)


@dataclass
class Recorder:
    """Handlers that record their calls and can be told to fail."""

    fail_with: BaseException | None = None
    result: Result = field(default_factory=lambda: RESULT)
    calls: list[tuple[str, Request]] = field(default_factory=list)

    def _call(self, name: str, req: Request) -> None:
        self.calls.append((name, req))
        if self.fail_with is not None:
            raise self.fail_with

    def add(self, req: Request) -> Result:
        self._call("add", req)
        return self.result

    def delete(self, req: Request) -> None:
        self._call("delete", req)

    def check(self, req: Request) -> None:
        self._call("check", req)

    def gc(self, req: Request) -> None:
        self._call("gc", req)

    def status(self, req: Request) -> None:
        self._call("status", req)


def env(command: str, **extra: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/var/run/netns/p",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        **extra,
    }


def conf(version: str = "1.1.0") -> bytes:
    return json.dumps({"cniVersion": version, "name": "pods", "type": "loxi-cni"}).encode()


def reply(out: bytes) -> Any:
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    return json.loads(out)


def test_version() -> None:
    code, out = run(Recorder(), {"CNI_COMMAND": "VERSION"}, b"", KNOWN)
    assert code == 0
    assert out == (
        b'{"cniVersion":"1.1.0","supportedVersions":'
        b'["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n'
    )


def test_version_calls_no_handler() -> None:
    h = Recorder()
    run(h, {"CNI_COMMAND": "VERSION"}, conf("0.4.0"), KNOWN)
    assert h.calls == []


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_prints_the_result_in_the_config_version(version: str) -> None:
    h = Recorder()
    code, out = run(h, env("ADD"), conf(version), KNOWN)
    assert code == 0
    assert reply(out) == result_to_json(RESULT, version)
    assert (
        out == json.dumps(result_to_json(RESULT, version), separators=(",", ":")).encode() + b"\n"
    )
    assert [name for name, _ in h.calls] == ["add"]
    assert h.calls[0][1].cni_version == version


def test_add_output_is_compact() -> None:
    _, out = run(Recorder(), env("ADD"), conf(), KNOWN)
    assert b" " not in out
    assert out.startswith(b'{"cniVersion":"1.1.0","interfaces":[{"name":"eth0"')


@pytest.mark.parametrize(
    ("command", "handler", "version"),
    [
        ("DEL", "delete", "0.1.0"),
        ("CHECK", "check", "0.4.0"),
        ("GC", "gc", "1.1.0"),
        ("STATUS", "status", "1.1.0"),
    ],
)
def test_other_commands_print_nothing_on_success(command: str, handler: str, version: str) -> None:
    h = Recorder()
    assert run(h, env(command), conf(version), KNOWN) == (0, b"")
    assert [name for name, _ in h.calls] == [handler]
    assert h.calls[0][1].command == command


def test_handler_cni_error_is_reported_in_the_config_version() -> None:
    h = Recorder(fail_with=CniError(Code.ADDRESS_UNAVAILABLE, "pool exhausted", "10.0.0.0/30"))
    code, out = run(h, env("ADD"), conf("0.4.0"), KNOWN)
    assert code == 1
    assert reply(out) == {
        "cniVersion": "0.4.0",
        "code": 102,
        "msg": "pool exhausted",
        "details": "10.0.0.0/30",
    }


@pytest.mark.parametrize("command", ["DEL", "CHECK", "GC", "STATUS"])
def test_handler_cni_error_for_every_command(command: str) -> None:
    h = Recorder(fail_with=CniError(Code.CHECK_FAILED, "differs"))
    code, out = run(h, env(command), conf(), KNOWN)
    assert code == 1
    assert reply(out) == {"cniVersion": "1.1.0", "code": 105, "msg": "differs"}


def test_unexpected_exception_is_internal_error_without_traceback_on_stdout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Recorder(fail_with=ValueError("boom"))
    with caplog.at_level(logging.ERROR):
        code, out = run(h, env("DEL"), conf("1.0.0"), KNOWN)
    assert code == 1
    assert reply(out) == {"cniVersion": "1.0.0", "code": 999, "msg": "internal error: boom"}
    assert b"Traceback" not in out
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


def test_add_returning_garbage_is_an_internal_error() -> None:
    h = Recorder(result="not a result")  # type: ignore[arg-type]
    code, out = run(h, env("ADD"), conf(), KNOWN)
    assert code == 1
    assert reply(out)["code"] == Code.INTERNAL


def test_result_not_expressible_in_config_version_is_error_1() -> None:
    h = Recorder(result=Result(interfaces=[Interface(name="eth0")]))
    code, out = run(h, env("ADD"), conf("0.2.0"), KNOWN)
    assert code == 1
    assert reply(out)["code"] == Code.INCOMPATIBLE_VERSION
    assert reply(out)["cniVersion"] == "0.2.0"


def test_keyboard_interrupt_is_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt):
        run(Recorder(fail_with=KeyboardInterrupt()), env("DEL"), conf(), KNOWN)


# --------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize(
    ("e", "stdin", "code", "version"),
    [
        ({}, conf("0.4.0"), Code.INVALID_ENV, "1.1.0"),  # stdin never read
        ({"CNI_COMMAND": "BOGUS"}, conf("0.4.0"), Code.INVALID_ENV, "1.1.0"),
        (env("ADD", CNI_NETNS=""), conf("0.4.0"), Code.INVALID_ENV, "1.1.0"),
        (env("ADD"), b"{", Code.DECODE_FAILURE, "1.1.0"),
        (env("ADD"), conf("1.2.0"), Code.INCOMPATIBLE_VERSION, "1.1.0"),  # unsupported
        (env("ADD", CNI_IFNAME="a:b"), conf("0.3.1"), Code.INVALID_ENV, "0.3.1"),
        (env("ADD", CNI_CONTAINERID="_x"), conf("1.0.0"), Code.INVALID_ENV, "1.0.0"),
        (env("ADD", CNI_ARGS="NOPE=1"), conf("0.2.0"), Code.INVALID_ENV, "0.2.0"),
        (env("CHECK"), conf("0.3.1"), Code.INCOMPATIBLE_VERSION, "0.3.1"),
        (env("GC"), conf("1.0.0"), Code.INCOMPATIBLE_VERSION, "1.0.0"),
        (env("STATUS"), conf("0.4.0"), Code.INCOMPATIBLE_VERSION, "0.4.0"),
    ],
)
def test_parse_errors(e: dict[str, str], stdin: bytes, code: int, version: str) -> None:
    h = Recorder()
    rc, out = run(h, e, stdin, KNOWN)
    assert rc == 1
    body = reply(out)
    assert (body["code"], body["cniVersion"]) == (code, version)
    assert body["msg"]
    assert h.calls == []


def test_stdin_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = json.loads

    def counting(*a: Any, **k: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*a, **k)

    monkeypatch.setattr(json, "loads", counting)
    assert run(Recorder(), env("ADD"), conf(), KNOWN)[0] == 0
    assert calls == 1


def test_skel_imports_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import loxicni.cni.skel\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "foreign = new - set(sys.stdlib_module_names) - {'loxicni'}\n"
        "print(sorted(foreign))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
