"""Delegated IPAM: exec ``<CNI_PATH>/<ipam.type>`` as the CNI spec says.

The plugin runs with our environment (CNI_COMMAND replaced) and the whole network config on
stdin. A CNI error it prints is passed on unchanged, so the runtime sees the IPAM's own code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from loxicni.cni.errors import CniError, Code

TIMEOUT_SECONDS = 60.0


def find_plugin(plugin_type: str, path: Sequence[str]) -> str:
    """The executable for ``plugin_type``; a type that looks like a path is never exec'd."""
    if (
        not plugin_type
        or "/" in plugin_type
        or "\\" in plugin_type
        or ".." in plugin_type
        or "\0" in plugin_type
    ):
        raise CniError(
            Code.INVALID_CONFIG, f"ipam.type {plugin_type!r} must be a plain plugin name"
        )
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(
        Code.INVALID_CONFIG,
        f"IPAM plugin {plugin_type!r} not found in CNI_PATH",
        f"searched: {':'.join(path)}",
    )


def run(
    plugin_type: str, path: Sequence[str], command: str, env: Mapping[str, str], stdin: bytes
) -> bytes:
    """Exec the IPAM plugin for ``command``; return its stdout or raise its CNI error."""
    import subprocess  # ~2 ms of start-up, so only when an IPAM plugin is exec'd

    binary = find_plugin(plugin_type, path)
    child_env = dict(env)
    child_env["CNI_COMMAND"] = command
    try:
        proc = subprocess.run(
            [binary],
            input=stdin,
            env=child_env,
            capture_output=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CniError(
            Code.TRY_AGAIN_LATER, f"IPAM plugin {plugin_type} {command} timed out"
        ) from exc
    except OSError as exc:
        raise CniError(Code.IPAM_FAILURE, f"cannot exec IPAM plugin {binary}: {exc}") from exc
    if proc.returncode == 0:
        return proc.stdout
    raise _plugin_error(plugin_type, command, proc.stdout, proc.stderr)


def _plugin_error(plugin_type: str, command: str, stdout: bytes, stderr: bytes) -> CniError:
    try:
        obj = json.loads(stdout)
        code, msg = obj["code"], obj["msg"]
        if isinstance(code, int) and isinstance(msg, str):
            return CniError(code, msg, str(obj.get("details") or ""))
    except (ValueError, KeyError, TypeError):
        pass
    text = (stdout or stderr).decode(errors="replace").strip()
    return CniError(Code.IPAM_FAILURE, f"IPAM plugin {plugin_type} {command} failed", text[:2000])
