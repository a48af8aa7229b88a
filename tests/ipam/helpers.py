"""Shared helpers: build configs, run our allocator and the reference host-local binary."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loxicni.cni.types import Result
from loxicni.ipam import hostlocal
from loxicni.ipam.config import HostLocalConfig, parse_host_local

HOST_LOCAL = Path("/usr/lib/cni/host-local")
# The reference binary comes with Debian's containernetworking-plugins, which `make test`
# installs: its absence fails these tests rather than skipping them.
needs_reference = pytest.mark.usefixtures("reference_host_local")  # see conftest.py


def netconf(
    data_dir: Path,
    ranges: list[list[dict[str, Any]]] | None = None,
    name: str = "net",
    **extra: Any,
) -> dict[str, Any]:
    """A whole network config as a runtime would pass it (cniVersion 1.0.0 for the reference)."""
    ipam: dict[str, Any] = {"type": "host-local", "dataDir": str(data_dir)}
    if ranges is not None:
        ipam["ranges"] = ranges
    top: dict[str, Any] = {
        k: extra.pop(k) for k in ("runtimeConfig", "args", "cniVersion") if k in extra
    }
    ipam.update(extra)
    return {"cniVersion": "1.0.0", "name": name, "ipam": ipam, **top}


def with_data_dir(conf: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(conf))
    copy["ipam"]["dataDir"] = str(data_dir)
    return copy


def parse(conf: dict[str, Any], cni_args: dict[str, str] | None = None) -> HostLocalConfig:
    return parse_host_local(conf, cni_args or {})


def ours_add(
    conf: dict[str, Any], cid: str, ifname: str = "eth0", cni_args: dict[str, str] | None = None
) -> Result:
    return hostlocal.allocate(parse(conf, cni_args), cid, ifname)


def ips(result: Result) -> list[str]:
    return [str(c.address) for c in result.ips]


def run_reference(
    command: str,
    conf: dict[str, Any],
    cid: str,
    ifname: str = "eth0",
    cni_args: str = "",
) -> dict[str, Any]:
    """Run the reference binary; its JSON output (a result, an error, or {} for DEL)."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": ifname,
        "CNI_PATH": str(HOST_LOCAL.parent),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    if cni_args:
        env["CNI_ARGS"] = cni_args
    proc = subprocess.run(
        [str(HOST_LOCAL)],
        input=json.dumps(conf).encode(),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    out: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0 and "code" not in out:
        out = {"code": -1, "msg": proc.stderr.decode(errors="replace")}
    return out


def reference_ips(out: dict[str, Any]) -> list[str]:
    assert "code" not in out, out
    return [ip["address"] for ip in out.get("ips", [])]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in a network directory: content and permission bits."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def leftovers(directory: Path) -> set[str]:
    """Names left that are not bookkeeping (lock, last_reserved_ip.*)."""
    return {
        p.name
        for p in directory.iterdir()
        if p.name != "lock" and not p.name.startswith("last_reserved_ip.")
    }
