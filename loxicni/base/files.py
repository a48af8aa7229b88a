"""Whole-file replacement that a reader never sees half done, and the cleanup of its debris;
appending to a file confined to one directory.

A writer puts the bytes in a temporary file beside the target and renames it over the target
(rename is atomic within a directory). A writer killed in between leaves its temporary file:
those are found by name and removed once they are older than any write can take. The age
decides, not the writer's PID: the agent of a DaemonSet and a plugin run by the host's runtime
live in different PID namespaces and cannot tell whether the other's PIDs are alive.
"""

from __future__ import annotations

import os
import stat
import time
from contextlib import suppress

from loxicni.base import faults

TEMP_SUFFIX = ".tmp"
TEMP_PREFIX = "."
# A write takes milliseconds; a temp file this old belongs to a writer that died.
STALE_AFTER = 600.0
# Linux's CLOCK_REALTIME_COARSE, the clock the kernel stamps most file times from. It moves in
# ticks (~4 ms) and lags the real time by up to about a tick: a file written just after a
# time.time() reading can carry an earlier mtime. Some writes get a fine-grained stamp (the
# real time; multigrain timestamps) instead, later than the coarse clock of the moment.
_FILE_CLOCK = 5


def file_time_mark_ns() -> int:
    """A time that splits file writes: a file written before this call has an earlier mtime,
    one written after it returns this one or later (to the ns; compare ``st_mtime_ns``). The
    first reading of the file clock past the real time of the call: waits a tick or two."""
    entry = time.time_ns()  # after every write before the call, fine-grained stamps included
    give_up = time.monotonic() + 1.0  # a clock that stands still must not hang the caller
    while (mark := time.clock_gettime_ns(_FILE_CLOCK)) <= entry and time.monotonic() < give_up:
        time.sleep(0.0005)
    return mark


def temp_name(name: str) -> str:
    """A temporary name for ``name``, unique across processes and threads."""
    return f"{TEMP_PREFIX}{name}.{os.urandom(6).hex()}{TEMP_SUFFIX}"


def fixed_temp_name(name: str) -> str:
    """The one temporary name for ``name``, for writers serialised by a lock (see
    ``write_atomic``'s ``temp_path``)."""
    return f"{TEMP_PREFIX}{name}.locked{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def write_new(path: str | os.PathLike[str], data: bytes, mode: int, *, sync: bool = False) -> None:
    """Create ``path`` exclusively (FileExistsError if it exists) and write ``data``; the file
    is removed again if writing fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    sync: bool = False,
    temp_dir: str | os.PathLike[str] | None = None,
    temp_path: str | os.PathLike[str] | None = None,
) -> None:
    """Replace ``path`` with ``data``; a reader sees the old content or the new, never a mix.

    ``sync`` fsyncs the file and its directory (for files other programs must find after a
    power loss, such as the node's CNI config). ``temp_dir`` (same filesystem) keeps the
    temporary file out of a directory that others list. ``temp_path`` names the temporary
    file outright, for writers that all hold one lock: the remains of a writer killed before
    its rename are then replaced by the next write, and whoever removes ``path`` can remove
    them by name, where a unique name waits for ``remove_stale_temps``.
    """
    path = os.fspath(path)
    if temp_path is not None:
        tmp = os.fspath(temp_path)
        with suppress(FileNotFoundError):
            os.unlink(tmp)
    else:
        directory = os.fspath(temp_dir) if temp_dir is not None else os.path.dirname(path)
        tmp = os.path.join(directory or ".", temp_name(os.path.basename(path)))
    write_new(tmp, data, mode, sync=sync)
    try:
        faults.step("write-temp")
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temps(
    directory: str | os.PathLike[str], older_than: float = STALE_AFTER
) -> list[str]:
    """Remove temp files of ``write_atomic`` older than ``older_than`` seconds; their names."""
    removed: list[str] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not is_temp_name(entry.name):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(entry.name)
    return removed


def open_append_in(directory: str, path: str) -> int:
    """An fd appending to ``path``, a regular file directly in ``directory`` (created 0640 if
    missing). Nothing named is followed if it is a symlink, neither ``directory`` nor the file,
    and a file with other hard links is refused: whoever chooses ``path`` chooses nothing
    outside ``directory``. ValueError or OSError says why not."""
    name = os.path.basename(path)
    if (
        not os.path.isabs(path)
        or os.path.dirname(os.path.normpath(path)) != os.path.normpath(directory)
        or name in ("", ".", "..")
    ):
        raise ValueError(f"{path} is not a file directly in {directory}")
    os.makedirs(directory, mode=0o750, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(name, flags | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise ValueError(f"{path} is not a regular file of its own")
    return fd
