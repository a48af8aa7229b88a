"""Installing the plugin on a host from the self-contained tree this Python runs from: the
DaemonSet's init container (``loxi-cni install-host``, the host's directories mounted under
``--host-root``), so the host needs no Python, and no shell runs in the image.

On the host::

    <tree dir>/<id>/          a tree (deploy/bundle.sh), one per version installed; the id
                              changes with any byte of it
    <CNI bin dir>/loxi-cni    the executable runtimes exec, naming its tree <tree dir>/<id>

A tree is copied beside the others under a temporary name and renamed into place, so a tree
under its id is always whole. The executable is replaced by a rename: a runtime execs the old
version or the new, each with its own tree, never a mix and never nothing. The tree the
replaced executable named stays (a call that started from it may still be importing from it);
older ones go. Installing what is installed already writes nothing.

The executables (the tree's own copy and the one in the CNI bin dir) are built for the path the
tree had in the image; the path they are installed for is written into them here
(shim/loxi-cni.c, ``tree_slot``).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from loxicni.base import bundle

PLUGIN_NAME = "loxi-cni"  # what `"type": "loxi-cni"` makes runtimes exec from their CNI bin dir
_TAG = re.compile(rb"loxi-cni tree path, (\d+) bytes:")
_TEMP = ".tmp-"


class InstallError(Exception):
    pass


def tree_of(executable: bytes) -> str | None:
    """The tree a tree's executable names; None for one built without a tree (make install)."""
    found = _slot(executable)
    if found is None:
        return None
    start, size = found
    return executable[start : start + size].split(b"\0", 1)[0].decode()


def relocate(executable: bytes, tree: str) -> bytes:
    """The executable, naming the tree at ``tree`` (an absolute path as its host sees it)."""
    found = _slot(executable)
    if found is None:
        raise InstallError("the executable has no tree path to rewrite")
    start, size = found
    path = tree.encode()
    if not tree.startswith("/") or b"\0" in path or len(path) >= size:
        raise InstallError(f"cannot name the tree {tree!r} (an absolute path under {size} bytes)")
    return executable[:start] + path + b"\0" * (size - len(path)) + executable[start + size :]


def _slot(executable: bytes) -> tuple[int, int] | None:
    matches = list(_TAG.finditer(executable))
    if not matches:
        return None
    if len(matches) > 1:
        raise InstallError("the executable holds more than one tree path")
    return matches[0].end(), int(matches[0].group(1))


@dataclass
class Installed:
    tree: str  # where the tree is on the host
    version: str
    copied: bool = False  # False: that tree was there already
    replaced: str | None = None  # the tree the previous executable named, if another
    removed: list[str] = field(default_factory=list)  # older trees and leftovers


def _under(root: Path, path: str) -> Path:
    """A host path as this process sees it, the host's root being mounted at ``root``."""
    if not path.startswith("/"):
        raise InstallError(f"{path!r} is not an absolute path")
    return root / path.lstrip("/")


def _write_executable(path: Path, data: bytes) -> None:
    """Replace ``path`` by a rename: a runtime execs the old file or the new one, whole."""
    temp = path.with_name(f".{path.name}{_TEMP}{os.getpid()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o755)
        try:
            os.write(fd, data)
            os.fchmod(fd, 0o755)  # whatever the umask
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _copy_tree(source: Path, target: Path, tree: str) -> None:
    """Copy a tree to ``target`` (under a temporary name first), naming itself ``tree``."""
    temp = target.with_name(f".{target.name}{_TEMP}{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        shutil.copytree(source, temp, symlinks=True)
        exe = temp / bundle.EXECUTABLE
        exe.write_bytes(relocate(exe.read_bytes(), tree))
        _sync(temp)
        os.rename(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _sync(directory: Path) -> None:
    """Flush a copied tree before it is renamed into place: after a power cut, a tree under
    its id must still be whole (a later install would take it as installed)."""
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in [*filenames, "."]:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def install_host(
    source: bundle.Tree, host_root: Path, tree_dir: str, cni_bin_dir: str
) -> Installed:
    """Install ``source`` on the host whose root is at ``host_root`` (module docstring)."""
    trees = _under(host_root, tree_dir)
    bin_dir = _under(host_root, cni_bin_dir)
    trees.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    tree = f"{tree_dir.rstrip('/')}/{source.id}"
    done = Installed(tree=tree, version=source.version)
    target = trees / source.id
    if not target.is_dir():
        _copy_tree(source.root, target, tree)
        done.copied = True

    plugin = bin_dir / PLUGIN_NAME
    executable = relocate((source.root / bundle.EXECUTABLE).read_bytes(), tree)
    try:
        current = plugin.read_bytes()
    except FileNotFoundError:
        current = b""
    previous = tree_of(current) if current else None
    if current != executable:
        _write_executable(plugin, executable)
    if previous != tree:
        done.replaced = previous

    keep = {source.id}
    if previous is not None and previous.startswith(f"{tree_dir.rstrip('/')}/"):
        keep.add(previous.rsplit("/", 1)[1])
    for entry in sorted(trees.iterdir()):
        if entry.name not in keep and installed_here(entry):
            shutil.rmtree(entry, ignore_errors=True)
            done.removed.append(entry.name)
    return done


def installed_here(entry: Path) -> bool:
    """Whether an entry of the tree dir is install_host's: a tree, or a copy cut short."""
    if entry.name.startswith(".") and _TEMP in entry.name:
        return True
    return entry.is_dir() and not entry.is_symlink() and (entry / bundle.MANIFEST).exists()
