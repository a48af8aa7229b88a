"""The Prometheus endpoint: a small HTTP server that can neither stall nor kill the agent.

Any local user can connect, so each connection gets a read/write timeout and at most
MAX_CLIENTS are served at once (more are closed at once). A scrape reads the records and the
host-local stores without taking any lock. A port that cannot be bound is reported, and the
agent serves CNI without metrics.
"""

from __future__ import annotations

import http.server
import socket
import threading
from typing import Any

from loxicni.agent import state
from loxicni.agent.metrics import Metrics
from loxicni.base.logs import get_logger
from loxicni.plugin import records

log = get_logger(__name__)

MAX_CLIENTS = 4
CLIENT_TIMEOUT = 5.0


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics) -> None:
        self.metrics = metrics
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: refuse rather than queue a thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT  # applied to the connection by StreamRequestHandler

    def do_GET(self) -> None:
        if self.path not in ("/metrics", "/"):
            self.send_error(404)
            return
        scan = records.scan()
        body = self.server.metrics.render(
            len(scan.held), state.pool_usage(scan), len(scan.unreadable), scan.deleting
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_metrics(address: str, metrics: Metrics) -> _Server | None:
    """Serve metrics on ``host:port`` in a thread; None (logged) if it cannot listen."""
    host, _, port = address.rpartition(":")
    try:
        server = _Server((host or "127.0.0.1", int(port)), metrics)
    except (OSError, ValueError) as exc:
        log.error("metrics: cannot listen on %s (%s); serving CNI without metrics", address, exc)
        return None
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
