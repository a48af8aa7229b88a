"""Exclusive flock(2) on a lock file that its last holder may unlink.

A holder that leaves its resource gone removes the lock file; a waiter that then wins the flock
on the unlinked file would hold nothing anyone else can see, so it notices (the path names
another inode, or none) and tries again on a fresh file.
"""

from __future__ import annotations

import fcntl
import os


def acquire(path: str | os.PathLike[str], mode: int = 0o600) -> int:
    """Block until this process holds the lock file at ``path``; its fd (close it to release)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            return fd
        os.close(fd)


def try_acquire(path: str | os.PathLike[str]) -> int | None:
    """The lock file at ``path`` if nobody holds it (its fd), None if someone does; never
    waits, nor creates the file (FileNotFoundError)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
