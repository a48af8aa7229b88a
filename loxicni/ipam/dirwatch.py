"""Which names in a directory changed since we last asked: inotify, through libc.

The agent keeps each host-local store's reservations in memory and must know when another
writer (the reference binary, our in-process fallback, an administrator) touched the
directory. The kernel queues an event at the moment of the change, so draining the queue
right after our own changes (under the store's lock) tells ours from everyone else's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

IN_MODIFY = 0x002
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_WATCHED = IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_Q_OVERFLOW | IN_IGNORED
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the NUL-padded name)

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


class DirWatch:
    """Names created, removed, renamed or written in one directory."""

    def __init__(self, path: str) -> None:
        lib = _lib()
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if (
            lib.inotify_add_watch(fd, os.fsencode(path), _WATCHED | IN_DELETE_SELF | IN_MOVE_SELF)
            < 0
        ):
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, os.strerror(err))
        self.fd = fd
        self.lost = False  # the watch no longer tells everything: the caller must rescan

    def changes(self) -> set[str] | None:
        """Names changed since the last call; None if changes may have been missed."""
        names: set[str] = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                raw = data[offset : offset + length]
                offset += length
                if mask & _LOST:
                    self.lost = True
                name = raw.split(b"\0", 1)[0]
                if name:
                    names.add(os.fsdecode(name))
        return None if self.lost else names

    def close(self) -> None:
        os.close(self.fd)
