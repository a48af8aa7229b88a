"""Working inside a pod's network namespace without moving the process.

A netlink socket keeps the netns of the thread that created it, so a short-lived thread
setns()es into the pod's netns, opens the socket (and any /proc/sys file) and exits. That costs
well under a millisecond, where pyroute2's ``IPRoute(netns=...)`` forks a helper (~7 ms).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0


class NetnsGone(Exception):
    """The netns path does not exist (the sandbox is already torn down)."""


class NotANetns(Exception):
    """The path exists but is not a network namespace."""


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
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
        run_in(fd, lambda: None)  # setns() refuses anything that is not a netns
    except NotANetns:
        os.close(fd)
        raise
    return fd


def adopt_netns(fd: int) -> int:
    """A private duplicate of a netns fd handed over by a client; NotANetns if not one."""
    own = os.dup(fd)
    try:
        run_in(own, lambda: None)
    except BaseException:
        os.close(own)
        raise
    return own


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


def netlink_socket_in(fd: int) -> socket.socket:
    """A NETLINK_ROUTE socket bound to the netns ``fd``."""
    return run_in(fd, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
