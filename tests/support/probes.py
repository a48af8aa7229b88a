"""Reachability probes between network namespaces: TCP connect, UDP request/response, SCTP.

Many probes run at once: every socket is made in its netns (a thread that joined it) and then
driven from one selector, so a batch of hundreds costs about one timeout, not one each.

- TCP: allowed if the connection is established (the SYN went through and the SYN-ACK came
  back: the reply of an allowed connection must pass too).
- UDP: a datagram carrying a nonce, echoed by the server; allowed if the echo comes back.
- SCTP: this kernel has no SCTP sockets, but IP carries protocol 132 and nftables/conntrack
  parse it. The client sends a raw SCTP INIT (CRC32c checksum, a random initiate tag); a raw
  socket in the destination's netns sees it or not. No answer is expected.

``Servers`` runs the listening side for a set of (netns, address, port, protocol).
"""

from __future__ import annotations

import errno
import os
import secrets
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address

from loxicni.net import netns

SCTP = 132


@dataclass(frozen=True)
class Probe:
    src: str  # netns name (under /var/run/netns)
    dst: str  # netns name of the destination
    ip: str  # destination address
    port: int
    protocol: str  # tcp | udp | sctp
    src_ip: str = ""  # bind the source to this address ("": the kernel's choice)

    def __str__(self) -> str:
        return f"{self.src}->{self.dst} {self.ip} {self.protocol}/{self.port}"


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


class _NsSockets:
    """Makes sockets inside named netns (one joining thread per batch and netns)."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def fd(self, name: str) -> int:
        if name not in self.fds:
            self.fds[name] = netns.open_netns(f"/var/run/netns/{name}")
        return self.fds[name]

    def make(
        self, name: str, specs: list[tuple[socket.AddressFamily, int, int]]
    ) -> list[socket.socket]:
        return netns.run_in(self.fd(name), lambda: [socket.socket(*s) for s in specs])

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _spec(family: socket.AddressFamily, protocol: str) -> tuple[socket.AddressFamily, int, int]:
    if protocol == "tcp":
        return family, socket.SOCK_STREAM, 0
    if protocol == "udp":
        return family, socket.SOCK_DGRAM, 0
    return family, socket.SOCK_RAW, SCTP


# --- SCTP by hand ----------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def sctp_init(sport: int, dport: int, tag: int) -> bytes:
    """An SCTP packet holding one INIT chunk (RFC 9260 3.3.2), checksum filled in."""
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65535, 1, 1, tag)
    head = struct.pack("!HHII", sport, dport, 0, 0)
    packet = head + chunk
    crc = crc32c(packet)
    # The checksum goes in little-endian byte order (RFC 9260 appendix B).
    return packet[:8] + struct.pack("<I", crc) + packet[12:]


def _parse_sctp(data: bytes, family: socket.AddressFamily) -> tuple[int, int] | None:
    """(destination port, initiate tag) of an INIT, from what a raw socket read."""
    if family == socket.AF_INET:
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 32 or data[12] != 1:
        return None
    _sport, dport = struct.unpack("!HH", data[:4])
    (tag,) = struct.unpack("!I", data[16:20])
    return dport, tag


# --- the listening side ----------------------------------------------------------------------


@dataclass
class Servers:
    """Listeners for TCP and UDP (echo) and raw SCTP receivers, served by one thread."""

    endpoints: set[tuple[str, str, int, str]] = field(default_factory=set)
    sel: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    sctp_seen: set[tuple[str, int, int]] = field(default_factory=set)  # (netns, port, tag)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _raw: set[tuple[str, socket.AddressFamily]] = field(default_factory=set)

    def listen(self, endpoints: Iterable[tuple[str, str, int, str]]) -> None:
        """Open (netns, address, port, protocol) endpoints (idempotent); serve them. SCTP
        needs one raw receiver per netns and family, whatever the address and port."""
        todo = sorted(set(endpoints) - self.endpoints)
        by_ns: dict[str, list[tuple[str, int, str]]] = {}
        for name, ip, port, proto in todo:
            if proto == "sctp":
                if (name, _family(ip)) in self._raw:
                    continue
                self._raw.add((name, _family(ip)))
            by_ns.setdefault(name, []).append((ip, port, proto))
        ns = _NsSockets()
        try:
            for name, items in by_ns.items():
                specs = [_spec(_family(ip), proto) for ip, _port, proto in items]
                for (ip, port, proto), sock in zip(items, ns.make(name, specs), strict=True):
                    if proto != "sctp":
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.bind((ip, port))
                    if proto == "tcp":
                        sock.listen(128)
                    sock.setblocking(False)
                    self._register(sock, (proto, name))
        finally:
            ns.close()
        self.endpoints |= set(todo)
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="probe-servers", daemon=True)
            self._thread.start()

    def _register(self, sock: socket.socket, data: tuple[str, str]) -> None:
        with self._lock:
            self._sockets.append(sock)
            self.sel.register(sock, selectors.EVENT_READ, data)

    def _serve(self) -> None:
        # epoll lets other threads register while this one waits in select().
        while not self._stop.is_set():
            events = self.sel.select(timeout=0.05) if self._sockets else []
            if not events:
                time.sleep(0.01 if not self._sockets else 0)
                continue
            for key, _mask in events:
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                kind, name = key.data
                try:
                    if kind == "tcp":
                        conn, _ = sock.accept()
                        conn.close()
                    elif kind == "udp":
                        data, peer = sock.recvfrom(2048)
                        sock.sendto(data, peer)
                    else:
                        data = sock.recv(4096)
                        parsed = _parse_sctp(data, sock.family)
                        if parsed is not None:
                            self.sctp_seen.add((name, *parsed))
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()
        self.sel.close()


# --- the probing side ------------------------------------------------------------------------


def run_probes(
    probes: Iterable[Probe], servers: Servers, timeout: float = 1.0
) -> dict[Probe, bool]:
    """Every probe at once; True where the traffic got through (and back, for TCP and UDP).

    A miss is retried once: the first packet of a path may wait for neighbour resolution.
    """
    probes = list(dict.fromkeys(probes))
    result = _run_once(probes, servers, timeout)
    missed = [p for p, ok in result.items() if not ok]
    if missed:
        result.update(_run_once(missed, servers, timeout))
    return result


def _run_once(probes: list[Probe], servers: Servers, timeout: float) -> dict[Probe, bool]:
    ns = _NsSockets()
    result = {p: False for p in probes}
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    sctp_wanted: dict[Probe, tuple[str, int, int]] = {}
    try:
        by_src: dict[str, list[Probe]] = {}
        for p in probes:
            by_src.setdefault(p.src, []).append(p)
        for src, items in by_src.items():
            made = ns.make(src, [_spec(_family(p.ip), p.protocol) for p in items])
            socks += made
            for p, sock in zip(items, made, strict=True):
                sock.setblocking(False)
                if p.src_ip:
                    sock.bind((p.src_ip, 0))
                addr = (p.ip, p.port)
                if p.protocol == "tcp":
                    err = sock.connect_ex(addr)
                    if err not in (0, errno.EINPROGRESS):
                        continue
                    sel.register(sock, selectors.EVENT_WRITE, p)
                elif p.protocol == "udp":
                    nonce = secrets.token_bytes(8)
                    sock.connect(addr)
                    sock.send(nonce)
                    sel.register(sock, selectors.EVENT_READ, (p, nonce))
                else:
                    tag = secrets.randbits(31) | 1
                    sport = 1024 + secrets.randbelow(60000)
                    sock.sendto(sctp_init(sport, p.port, tag), (p.ip, 0))
                    sctp_wanted[p] = (p.dst, p.port, tag)
        deadline = time.monotonic() + timeout
        pending = len(sel.get_map())
        while pending and (left := deadline - time.monotonic()) > 0:
            for key, _mask in sel.select(timeout=left):
                sock = key.fileobj  # type: ignore[assignment]
                if isinstance(key.data, Probe):
                    ok = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                    result[key.data] = ok
                else:
                    p, nonce = key.data
                    try:
                        result[p] = sock.recv(64) == nonce
                    except OSError:
                        result[p] = False
                sel.unregister(sock)
                pending -= 1
        if sctp_wanted:
            # The SCTP side has no answer to wait for: give the packets the same time.
            end = time.monotonic() + min(timeout, 0.3)
            while time.monotonic() < end and not all(
                w in servers.sctp_seen for w in sctp_wanted.values()
            ):
                time.sleep(0.01)
            for p, wanted in sctp_wanted.items():
                result[p] = wanted in servers.sctp_seen
    finally:
        sel.close()
        for sock in socks:
            sock.close()
        ns.close()
    return result


def is_v6(ip: str) -> bool:
    return ip_address(ip).version == 6
