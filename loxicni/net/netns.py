"""Working inside a pod's network namespace without moving the process.

A netlink socket keeps the netns of the thread that created it, so a short-lived thread
setns()es into the pod's netns, opens the socket (and any /proc/sys file) and exits. That costs
well under a millisecond, where pyroute2's ``IPRoute(netns=...)`` forks a helper (~7 ms).
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from loxicni.net import rtnl

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl of a namespace file: its CLONE_NEW* type (Linux 4.11+)


class NetnsGone(Exception):
    """The netns path does not exist (the sandbox is already torn down)."""


class NotANetns(Exception):
    """The path exists but is not a network namespace."""


_libc: Any = None  # Python < 3.12: libc through ctypes, loaded on first use


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    global _libc
    import ctypes  # ~1 ms of start-up, so only where os.setns is missing

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_netns(path: str) -> int:
    """Open a netns file and return its fd; NetnsGone if it vanished, NotANetns if not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NetnsGone(path) from exc
    except NotADirectoryError as exc:
        raise NetnsGone(path) from exc
    try:
        _check_netns(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def adopt_netns(fd: int) -> int:
    """A private duplicate of a netns fd handed over by a client; NotANetns if not one."""
    own = os.dup(fd)
    try:
        _check_netns(own)
    except BaseException:
        os.close(own)
        raise
    return own


def _check_netns(fd: int) -> None:
    """NotANetns unless ``fd`` is a network namespace: one ioctl, not a thread's setns()."""
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:  # not a namespace file (ENOTTY), or an old kernel: setns() decides
        run_in(fd, lambda: None)
        return
    if kind != CLONE_NEWNET:
        raise NotANetns(f"namespace type {kind:#x}, not a network namespace")


def run_in(fd: int, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has joined the netns ``fd``; re-raise its exception."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            _setns(fd)
        except OSError as exc:
            box["error"] = NotANetns(str(exc)) if exc.errno == errno.EINVAL else exc
            return
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name="loxi-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def netlink_socket_in(fd: int) -> _socket.socket:
    """A NETLINK_ROUTE socket bound to the netns ``fd`` (for ``rtnl.Rtnl``)."""
    return run_in(fd, rtnl.open_socket)


class Netns:
    """A pod's netns held open: its fd, and a netlink socket bound to it.

    Opened from a path (in-process), or from an fd a client handed over (the agent), which is
    duplicated so the caller keeps its own. NetnsGone / NotANetns / OSError if it cannot be.
    """

    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        self.fd = adopt_netns(fd) if fd is not None else open_netns(path)
        try:
            self.ipr = rtnl.Rtnl(netlink_socket_in(self.fd))
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        self.ipr.close()
        os.close(self.fd)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
