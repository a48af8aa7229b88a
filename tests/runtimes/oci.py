"""Container images built locally: no registry is reachable, so a runtime can only import them.

A docker-archive tarball (``manifest.json`` + config + one layer) is the one format that both
``ctr image import`` and ``podman load`` accept.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # Debian busybox-static: one static binary, no libc needed
# The applets the tests call inside containers, as symlinks to /bin/busybox.
APPLETS = ("sh", "ip", "ping", "sleep", "cat", "echo", "hostname", "nc", "ls", "true", "grep")
PAUSE_SOURCE = Path(__file__).resolve().parents[2] / "images" / "pause" / "pause.c"


@dataclass(frozen=True)
class Image:
    name: str  # the reference the runtimes know it by after import, e.g. loxi.local/busybox:rt
    tarball: Path


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(info)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 0
    tar.addfile(info)


def _layer(files: dict[str, bytes], links: dict[str, str]) -> bytes:
    """An uncompressed layer: the usual top-level dirs, ``files`` and ``links``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "run", "var"):
            _add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        _add_file(tar, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644)
        _add_file(tar, "etc/group", b"root:x:0:\n", 0o644)
        for name, data in sorted(files.items()):
            _add_file(tar, name, data)
        for name, target in sorted(links.items()):
            _add_symlink(tar, name, target)
    return buf.getvalue()


def docker_archive(dest: Path, name: str, layer: bytes, cmd: list[str]) -> Image:
    """Write a one-layer docker-archive tarball whose image is tagged ``name``."""
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
            "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "tests/runtimes/oci.py"}],
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [name], "Layers": [layer_name]}]
    ).encode()
    with tarfile.open(dest, "w") as tar:
        _add_file(tar, config_name, config, 0o644)
        _add_file(tar, layer_name, layer, 0o644)
        _add_file(tar, "manifest.json", manifest, 0o644)
    return Image(name=name, tarball=dest)


def busybox_image(dest: Path, name: str) -> Image:
    """Busybox-static's binary with symlinks for the applets the tests use."""
    layer = _layer({"bin/busybox": BUSYBOX.read_bytes()}, {f"bin/{a}": "busybox" for a in APPLETS})
    return docker_archive(dest, name, layer, ["sh"])


def pause_image(dest: Path, name: str, workdir: Path) -> Image:
    """A pod sandbox image: images/pause/pause.c compiled static, sleeping until signalled."""
    binary = workdir / "pause"
    subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(binary), str(PAUSE_SOURCE)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    layer = _layer({"pause": binary.read_bytes()}, {})
    return docker_archive(dest, name, layer, ["/pause"])
