"""Turn the runtime's environment and stdin into one validated, typed ``Request``.

Validation follows the reference ``skel`` package so that a runtime sees the same error
codes from this plugin as from the reference plugins: bad or missing environment is
code 4, undecodable stdin code 6, an unusable ``cniVersion`` code 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loxicni.cni.errors import CniError, Code
from loxicni.cni.names import ifname_problem, is_utf8
from loxicni.cni.version import LATEST, SUPPORTED_VERSIONS, at_least

# Environment each command cannot do without (CNI_COMMAND itself is checked first).
_REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}

# The oldest config version in which a command exists.
_MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# Spelled out rather than \w, which would admit non-ASCII letters.
_CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")

# The CNI_ARGS key every plugin understands: accept keys meant for other plugins.
IGNORE_UNKNOWN = "IgnoreUnknown"


class RequestError(CniError):
    """A ``CniError`` raised while parsing, remembering the config's ``cniVersion``.

    The error reply should speak the config's version when it was read and supported;
    carrying it here lets the dispatcher know it without decoding stdin again.
    """

    def __init__(self, err: CniError, config_version: str) -> None:
        super().__init__(err.code, err.msg, err.details)
        self.config_version = config_version


@dataclass(frozen=True)
class Request:
    command: str  # ADD DEL CHECK VERSION GC STATUS
    container_id: str  # "" when not required by the command
    netns: str  # may be "" (DEL)
    ifname: str  # "" when not required by the command
    args: tuple[tuple[str, str], ...]  # CNI_ARGS pairs in order
    path: tuple[str, ...]  # CNI_PATH split on ':' with empty parts dropped
    config: dict[str, Any]  # decoded stdin object ({} for VERSION with empty stdin)
    config_bytes: bytes  # raw stdin, to forward to delegated plugins
    cni_version: str  # config["cniVersion"], "0.1.0" if absent (like libcni)

    def args_string(self) -> str:
        """CNI_ARGS as the runtime sent it (for delegated plugins and records)."""
        return ";".join(f"{k}={v}" for k, v in self.args)

    def arg(self, key: str) -> str | None:
        """The last value given for a CNI_ARGS key (later pairs override earlier ones)."""
        for k, v in reversed(self.args):
            if k == key:
                return v
        return None


def parse_cni_args(raw: str) -> tuple[tuple[str, str], ...]:
    """Split CNI_ARGS ("K=V;K2=V2") into pairs; a value may itself contain '='."""
    if raw == "":
        return ()
    if not is_utf8(raw):
        raise CniError(Code.INVALID_ENV, "CNI_ARGS is not valid UTF-8")
    pairs: list[tuple[str, str]] = []
    for part in raw.split(";"):
        key, sep, value = part.partition("=")
        if not sep:
            raise CniError(Code.INVALID_ENV, f"CNI_ARGS: invalid pair {part!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return tuple(pairs)


def validate_container_id(container_id: str) -> None:
    """An alphanumeric first character, then alphanumerics, '_', '.' or '-' (the spec's rule)."""
    if not _CONTAINER_ID_RE.fullmatch(container_id):
        raise CniError(Code.INVALID_ENV, f"invalid characters in CNI_CONTAINERID {container_id!r}")


def validate_ifname(ifname: str) -> None:
    """A name the kernel would accept for a link (the spec's and the reference's rules)."""
    problem = ifname_problem(ifname)
    if problem is not None:
        what = "CNI_IFNAME" if not ifname else f"CNI_IFNAME {ifname!r}"
        raise CniError(Code.INVALID_ENV, f"{what} {problem}")


def parse_request(env: Mapping[str, str], stdin: bytes, known_args: frozenset[str]) -> Request:
    """Validate everything the runtime handed us; raise ``CniError`` on the first problem.

    Environment is checked before stdin is decoded (as the reference skel does). Errors
    raised after the config's version is known are ``RequestError``s carrying it.
    """
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(Code.INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in _REQUIRED_ENV:
        raise CniError(Code.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    required = _REQUIRED_ENV[command]
    missing = [name for name in required if not env.get(name)]
    if missing:
        raise CniError(Code.INVALID_ENV, f"required env variables [{','.join(missing)}] missing")

    config = _decode_config(command, stdin)
    cni_version = _config_version(command, config)
    try:
        return _build(command, env, stdin, config, cni_version, known_args)
    except CniError as err:
        raise RequestError(err, cni_version) from err


def _decode_config(command: str, stdin: bytes) -> dict[str, Any]:
    if command == "VERSION" and not stdin.strip():
        return {}
    try:
        config = json.loads(stdin, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CniError(
            Code.DECODE_FAILURE, f"error decoding network config from stdin: {exc}"
        ) from None
    if not isinstance(config, dict):
        raise CniError(
            Code.DECODE_FAILURE, "error decoding network config from stdin: not a JSON object"
        )
    return config


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are Python extensions, not JSON."""
    raise ValueError(f"invalid JSON constant {name}")


def _config_version(command: str, config: dict[str, Any]) -> str:
    """The config's cniVersion; absent, null or "" means 0.1.0, as libcni's decoder says."""
    version = config.get("cniVersion")
    if version is None or version == "":
        version = "0.1.0"
    if command == "VERSION":
        # VERSION is how a runtime negotiates, so it must answer whatever it was sent.
        return version if version in SUPPORTED_VERSIONS else LATEST
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: config is {json.dumps(version)}, "
            f"plugin supports {json.dumps(list(SUPPORTED_VERSIONS))}",
        )
    minimum = _MIN_VERSION.get(command)
    if minimum is not None and not at_least(version, minimum):
        raise RequestError(
            CniError(
                Code.INCOMPATIBLE_VERSION, f"config version {version} does not allow {command}"
            ),
            version,
        )
    return version


def _build(
    command: str,
    env: Mapping[str, str],
    stdin: bytes,
    config: dict[str, Any],
    cni_version: str,
    known_args: frozenset[str],
) -> Request:
    # Container, netns and interface only mean something to the per-attachment commands.
    per_attachment = command in ("ADD", "CHECK", "DEL")
    container_id = env.get("CNI_CONTAINERID", "") if per_attachment else ""
    netns = env.get("CNI_NETNS", "") if per_attachment else ""
    ifname = env.get("CNI_IFNAME", "") if per_attachment else ""
    if per_attachment:
        validate_container_id(container_id)
        validate_ifname(ifname)
    args: tuple[tuple[str, str], ...] = ()
    if command != "VERSION":
        args = parse_cni_args(env.get("CNI_ARGS", ""))
        _check_arg_keys(args, known_args)
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    return Request(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=args,
        path=path,
        config=config,
        config_bytes=stdin,
        cni_version=cni_version,
    )


def _check_arg_keys(args: tuple[tuple[str, str], ...], known_args: frozenset[str]) -> None:
    """Reject keys nobody declared, unless the runtime set IgnoreUnknown (as libcni does)."""
    ignore_unknown = False
    for key, value in args:
        if key == IGNORE_UNKNOWN:
            # Same spellings as the reference's UnmarshallableBool; others are errors.
            lowered = value.lower()
            if lowered not in ("1", "true", "0", "false"):
                raise CniError(
                    Code.INVALID_ENV,
                    f"CNI_ARGS: IgnoreUnknown must be 1, 0, true or false, not {value!r}",
                )
            ignore_unknown = lowered in ("1", "true")
    if ignore_unknown:
        return
    unknown = [k for k, _ in args if k != IGNORE_UNKNOWN and k not in known_args]
    if unknown:
        raise CniError(Code.INVALID_ENV, f"CNI_ARGS: unknown args {unknown}")
