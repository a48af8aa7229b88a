"""Our own ``loxi-cni agent``: started, watched (CPU, RSS, fds, requests served) and stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .errors import AgentUnavailable, BenchError
from .probes import cpu_seconds, descendants, status_kib
from .settings import AGENT_START_TIMEOUT, CALL_TIMEOUT


class Agent:
    """Our own ``loxi-cni agent`` on a private socket, so the host's agent (if any) is untouched."""

    def __init__(self, plugin: str, sock: Path, env: dict[str, str], log: Path) -> None:
        self.plugin, self.sock, self.env, self.log = plugin, sock, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [self.plugin, "agent", "--socket", str(self.sock)]
        # Metrics off when the agent has them: the counters still run, but a fixed TCP port
        # would collide with a host agent or another bench run.
        agent_help = subprocess.run([*cmd, "--help"], capture_output=True, env=self.env).stdout
        if b"--metrics" in agent_help:
            cmd += ["--metrics", "off"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                raise AgentUnavailable(f"`loxi-cni agent` exited with code {code}: {tail}")
            if self.sock.is_socket() and (self.served() is not None or self._connects()):
                return
            time.sleep(0.05)
        self.stop()
        raise AgentUnavailable(
            f"no listener on {self.sock} after {AGENT_START_TIMEOUT:.0f} s: {self.log_tail()}"
        )

    def _connects(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.sock))
                return True
            except OSError:
                return False

    def served(self) -> int | None:
        """Requests served, from ``loxi-cni status --json``; None if it does not tell."""
        proc = subprocess.run(
            [self.plugin, "status", "--socket", str(self.sock), "--json"],
            capture_output=True,
            env=self.env,
            timeout=CALL_TIMEOUT,
        )
        try:
            return int(json.loads(proc.stdout)["requestsServed"])
        except (ValueError, KeyError, TypeError):
            return None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").strip().splitlines()[-lines:]
            return " | ".join(text) or "(no output)"
        return "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"the agent died (exit {code}): {self.log_tail()}")

    def pids(self) -> list[int]:
        return [self.pid, *descendants(self.pid)]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def rss_kib(self) -> tuple[int, int]:
        """VmRSS of the agent process, and of it plus its descendants (workers, if any)."""
        return status_kib(self.pid, "VmRSS"), sum(status_kib(p, "VmRSS") for p in self.pids())

    def hwm_kib(self) -> int:
        """VmHWM (peak RSS) of the agent process."""
        return status_kib(self.pid, "VmHWM")

    def fds(self) -> int:
        return sum(len(os.listdir(f"/proc/{p}/fd")) for p in self.pids())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            print(f"WARNING: the agent ignored SIGTERM for 10 s; killed. {self.log_tail()}")
            self.proc.kill()
            self.proc.wait()
