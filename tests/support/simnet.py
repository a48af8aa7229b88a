"""Simulated networks made of network namespaces with plain ``ip`` (never with loxi-cni, so
they are an oracle independent of it), and traffic through them: the overlay's and the
Kubernetes cross-node suites build their nodes and routers the same way."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterable

from loxicni.net import netns

from .processes import sh


def ip_batch(ns: str | None, script: str) -> None:
    """Run ``ip`` commands (one a line) in netns ``ns`` (None: the host); a failure says what
    ``ip`` printed."""
    argv = ["ip", "-batch", "-"] if ns is None else ["ip", "-n", ns, "-batch", "-"]
    sh(argv, input=script, timeout=30)


def add_netns(name: str) -> str:
    """A new named netns with its loopback up (the caller records it for its clean-up)."""
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    ip_batch(name, "link set lo up\n")
    return name


def forwarding(ns: str) -> None:
    """Make netns ``ns`` a router for IPv4 and IPv6."""
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
         "net.ipv6.conf.all.forwarding=1"],
        check=True,
        timeout=30,
    )  # fmt: skip


def pings(pairs: Iterable[tuple[str, str]], *options: str) -> dict[tuple[str, str], bool]:
    """Ping every (from netns, to address) at once, with ping's ``options`` (count, waits):
    {(netns, address): answered}. At once, so a batch costs one timeout, not one each."""
    procs = {
        (ns, dst): subprocess.Popen(
            ["ip", "netns", "exec", ns, "ping", *options, "-q", dst],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for ns, dst in pairs
    }
    return {key: proc.wait(timeout=30) == 0 for key, proc in procs.items()}


def tcp_socket_in(ns: str, ip: str) -> socket.socket:
    """A TCP socket of ``ip``'s family made in netns ``ns`` (it stays there once made)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    fd = netns.open_netns(f"/var/run/netns/{ns}")
    try:
        return netns.run_in(fd, lambda: socket.socket(family, socket.SOCK_STREAM))
    finally:
        os.close(fd)


def transfer(client_ns: str, server_ns: str, dst: str, size: int = 1 << 20) -> str:
    """Send ``size`` random bytes over TCP from netns ``client_ns`` to a server at ``dst`` in
    ``server_ns``; check that all arrived intact (so a path MTU problem shows); the source
    address the server saw."""
    listener, sender = tcp_socket_in(server_ns, dst), tcp_socket_in(client_ns, dst)
    payload = os.urandom(size)
    received = hashlib.sha256()
    peer: list[str] = []
    with listener, sender:
        listener.bind((dst, 0))
        listener.listen(1)
        listener.settimeout(20)

        def serve() -> None:
            conn, addr = listener.accept()
            peer.append(addr[0])
            with conn:
                conn.settimeout(20)
                while chunk := conn.recv(65536):
                    received.update(chunk)

        thread = threading.Thread(target=serve)
        thread.start()
        sender.settimeout(20)
        sender.connect((dst, listener.getsockname()[1]))
        sender.sendall(payload)
        sender.shutdown(socket.SHUT_WR)
        thread.join(timeout=30)
    assert hashlib.sha256(payload).hexdigest() == received.hexdigest(), "transfer incomplete"
    return peer[0]
