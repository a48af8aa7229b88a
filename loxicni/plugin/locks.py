"""Per-attachment locks: concurrent calls for one (network, container, ifname) run in turn.

Lock order: this lock first, then the IPAM store's. The lock file is removed by the call that
leaves the attachment gone (DEL, a failed ADD); a waiter that then wins the flock on the
unlinked file notices and retries on a fresh one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loxicni.base import filelock, paths
from loxicni.plugin.naming import attachment_key


@dataclass
class HeldLock:
    remove_on_release: bool = False


def lock_path(network: str, container_id: str, ifname: str) -> Path:
    return Path(paths.locks_dir()) / attachment_key(network, container_id, ifname)


@contextmanager
def attachment_lock(network: str, container_id: str, ifname: str) -> Iterator[HeldLock]:
    """Hold the attachment's lock; set ``remove_on_release`` to delete the lock file after."""
    path = lock_path(network, container_id, ifname)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = filelock.acquire(path)
    held = HeldLock()
    try:
        yield held
    finally:
        if held.remove_on_release:
            path.unlink(missing_ok=True)
        os.close(fd)


def held(key: str) -> bool:
    """Does a call hold the lock of the attachment ``key`` right now? Never waits. A lock
    file exists while its lock is held (only its holder removes it), so none means free."""
    try:
        fd = filelock.try_acquire(Path(paths.locks_dir()) / key)
    except FileNotFoundError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


def remove_unused(in_use: Callable[[str], bool]) -> list[str]:
    """Remove the lock files of attachments for which ``in_use(key)`` is False; their keys.

    A call that dies between tearing its attachment down and releasing the lock (GC, the
    agent's reconcile, killed there) leaves a lock file no later call will look for: nothing
    of its attachment is left to find it by. Each file is taken without waiting: a held lock
    is in use, and one taken here and unlinked is noticed by anyone who opened it before
    (see ``attachment_lock``), so the sweep never races a live call.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(paths.locks_dir()))
    except FileNotFoundError:
        return removed
    for entry in entries:
        try:
            fd = filelock.try_acquire(entry.path)
        except FileNotFoundError:
            continue
        if fd is None:
            continue  # held: in use
        try:
            if os.stat(entry.path).st_ino != os.fstat(fd).st_ino or in_use(entry.name):
                continue
            os.unlink(entry.path)
            removed.append(entry.name)
        except FileNotFoundError:
            continue
        finally:
            os.close(fd)
    return removed
