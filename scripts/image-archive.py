#!/usr/bin/python3.11
"""Pack a root filesystem as a one-layer image, FROM scratch: a docker-archive tarball, the
format both `ctr images import` and `podman load` (and `docker load`) accept.

    scripts/image-archive.py ROOTFS IMAGE OUT [--entrypoint PATH] [--cmd ARG ...]

No container engine, base image or registry takes part, and the result is reproducible: the
same tree gives the same bytes, so the same image ID (entries sorted, owned by root, dated
SOURCE_DATE_EPOCH or 0). The layer is left uncompressed, which every importer takes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# Directories a container's runtime mounts over or expects; made here so it creates none.
SKELETON = {"dev": 0o755, "etc": 0o755, "proc": 0o755, "run": 0o755, "sys": 0o755,
            "tmp": 0o1777, "var": 0o755}  # fmt: skip
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def _info(name: str, st: os.stat_result, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    return info


def write_layer(rootfs: Path, out: io.BufferedWriter, mtime: int) -> str:
    """Write the layer tar of ``rootfs`` to ``out``; return its sha256 (the diff ID)."""
    digest = hashlib.sha256()

    class Hashing(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:  # type: ignore[override]
            digest.update(data)
            out.write(data)
            return len(data)

    with tarfile.open(fileobj=Hashing(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
        names = set()
        for top, mode in sorted(SKELETON.items()):
            if not (rootfs / top).exists():
                info = tarfile.TarInfo(top)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, mtime
                tar.addfile(info)
                names.add(top)
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            base = Path(dirpath)
            for entry in sorted([*dirnames, *filenames]):
                path = base / entry
                name = path.relative_to(rootfs).as_posix()
                st = path.lstat()
                info = _info(name, st, mtime)
                if stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                    tar.addfile(info)
                elif stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    info.size = st.st_size
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    raise SystemExit(f"image-archive: {path}: not a file, directory or link")
    return "sha256:" + digest.hexdigest()


def write_archive(
    rootfs: Path, image: str, out: Path, entrypoint: list[str], cmd: list[str], mtime: int
) -> str:
    """Write the docker-archive; return the image ID (the config's digest)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out.parent) as layer:
        diff_id = write_layer(rootfs, layer, mtime)  # type: ignore[arg-type]
        size = layer.tell()
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
        config = json.dumps(
            {
                "architecture": ARCHITECTURES.get(platform.machine(), platform.machine()),
                "os": "linux",
                "created": created,
                "config": {"Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": "/", "Env": []},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": created, "created_by": "scripts/image-archive.py"}],
            },
            sort_keys=True,
        ).encode()
        config_id = hashlib.sha256(config).hexdigest()
        layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
        manifest = json.dumps(
            [{"Config": f"{config_id}.json", "RepoTags": [image], "Layers": [layer_name]}]
        ).encode()
        temp = out.with_name(f".{out.name}.tmp")
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in ((f"{config_id}.json", config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, mtime
                tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(layer_name)
            info.size, info.mode, info.mtime = size, 0o644, mtime
            layer.seek(0)
            tar.addfile(info, layer)
        temp.rename(out)
    return "sha256:" + config_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rootfs", type=Path)
    parser.add_argument("image", help="the name the image is imported as, e.g. loxi-cni:0.1.0")
    parser.add_argument("out", type=Path)
    parser.add_argument("--entrypoint", action="append", default=[])
    parser.add_argument("--cmd", action="append", default=[])
    args = parser.parse_args()
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    image_id = write_archive(args.rootfs, args.image, args.out, args.entrypoint, args.cmd, mtime)
    print(f"{args.out}: {args.image} ({image_id}), {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
