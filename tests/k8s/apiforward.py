"""The API server, reachable from inside a simulated cluster: a TCP forwarder.

The control plane listens on the host's loopback only. The simulated nodes (network
namespaces) must reach it over their own underlay, like nodes reaching a control plane through
their network: this process listens in one of the cluster's namespaces (the router's, on an
address of its own) and forwards each connection to the API server on the host's loopback. So
the agents' traffic crosses their veths and the router, and nothing leaves the namespaces the
test made and the host's loopback. TLS passes through untouched (the API server's certificate
names 10.96.0.1, the address used here).

Usage: ``python -m tests.k8s.apiforward NETNS_PATH LISTEN_HOST LISTEN_PORT TO_HOST TO_PORT``;
prints ``ready`` once listening, runs until killed (and dies with its parent).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading

from loxicni.net import netns


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


def _serve(conn: socket.socket, upstream: tuple[str, int]) -> None:
    try:
        out = socket.create_connection(upstream, timeout=10)
    except OSError:
        conn.close()
        return
    out.settimeout(None)
    there = threading.Thread(target=_pump, args=(conn, out), daemon=True)
    there.start()
    _pump(out, conn)
    there.join()
    conn.close()
    out.close()


def main() -> None:
    netns_path, host, port, to_host, to_port = sys.argv[1:6]
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    fd = netns.open_netns(netns_path)
    listener = netns.run_in(fd, lambda: socket.create_server((host, int(port)), backlog=64))
    os.close(fd)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn, (to_host, int(to_port))), daemon=True).start()


if __name__ == "__main__":
    main()
