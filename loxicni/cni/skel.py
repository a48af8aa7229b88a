"""Dispatch one CNI invocation to the plugin's handlers and format the reply.

``run`` is pure: it takes the environment and stdin and returns the exit code and the
stdout bytes, so the entry point stays a thin shell and tests need no subprocess. It is
on the start-up path of every invocation, hence standard-library imports only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from loxicni.base.logs import get_logger
from loxicni.cni.errors import CniError, Code
from loxicni.cni.request import Request, RequestError, parse_request
from loxicni.cni.result import result_to_json
from loxicni.cni.types import Result
from loxicni.cni.version import LATEST, SUPPORTED_VERSIONS

log = get_logger(__name__)  # imports logging only if something is logged


class Handlers(Protocol):
    def add(self, req: Request) -> Result: ...
    def delete(self, req: Request) -> None: ...
    def check(self, req: Request) -> None: ...
    def gc(self, req: Request) -> None: ...
    def status(self, req: Request) -> None: ...


def run(
    handlers: Handlers, env: Mapping[str, str], stdin: bytes, known_args: frozenset[str]
) -> tuple[int, bytes]:
    """Run one command; return (exit code, stdout). Never raises for a plugin failure."""
    reply_version = LATEST  # until the config's version is known to be one we speak
    try:
        try:
            req = parse_request(env, stdin, known_args)
        except RequestError as err:
            reply_version = err.config_version
            raise
        reply_version = req.cni_version  # always a supported version once parsed
        return 0, _dispatch(handlers, req)
    except CniError as err:
        return 1, _encode(err.to_json(reply_version))
    except Exception as exc:
        # A bug, not a reportable condition: keep the traceback on stderr, where runtimes
        # log it, and give the runtime a well-formed error instead of a Python dump.
        log.exception("unhandled exception in CNI %s", env.get("CNI_COMMAND", "?"))
        internal = CniError(Code.INTERNAL, f"internal error: {exc}")
        return 1, _encode(internal.to_json(reply_version))


def _dispatch(handlers: Handlers, req: Request) -> bytes:
    if req.command == "VERSION":
        return _encode({"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)})
    if req.command == "ADD":
        return _encode(result_to_json(handlers.add(req), req.cni_version))
    if req.command == "DEL":
        handlers.delete(req)
    elif req.command == "CHECK":
        handlers.check(req)
    elif req.command == "GC":
        handlers.gc(req)
    elif req.command == "STATUS":
        handlers.status(req)
    else:  # parse_request admits only the commands above
        raise AssertionError(f"unhandled command {req.command!r}")
    return b""


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
