"""One CNI call: the pod it is for, and one timed exec of the plugin as a runtime makes it."""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .modes import Mode
from .settings import CALL_TIMEOUT, IFNAME


@dataclass
class Attachment:
    netns: str
    cid: str
    pod_uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    result: dict[str, Any] | None = None


@dataclass
class Call:
    seconds: float
    rc: int
    stdout: bytes
    stderr: bytes


def exec_plugin(mode: Mode, command: str, att: Attachment, stdin: bytes) -> Call:
    """One CNI call exactly as a runtime (containerd's CRI) makes it; wall time around the exec."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": att.cid,
        "CNI_NETNS": f"/var/run/netns/{att.netns}",
        "CNI_IFNAME": IFNAME,
        "CNI_PATH": mode.cni_path,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={att.netns};"
        f"K8S_POD_INFRA_CONTAINER_ID={att.cid};K8S_POD_UID={att.pod_uid}",
        **mode.extra_env,
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [mode.plugin], input=stdin, env=env, capture_output=True, timeout=CALL_TIMEOUT
    )
    return Call(time.perf_counter() - start, proc.returncode, proc.stdout, proc.stderr)


def describe(mode: Mode, command: str, att: Attachment, call: Call, why: str) -> str:
    out = call.stdout.decode(errors="replace").strip()[:300]
    err = call.stderr.decode(errors="replace").strip()[-300:]
    return f"{mode.title} {command} {att.cid}: {why} (exit {call.rc}) stdout={out!r} stderr={err!r}"
