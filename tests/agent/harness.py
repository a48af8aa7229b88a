"""A private node agent for a test: its own socket, state dir, log file and metrics port."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.host import free_port
from tests.support.plugin import PLUGIN, agent_status
from tests.support.processes import kill9


@dataclass
class Agent:
    socket: str
    state_dir: Path
    log: Path
    metrics_port: int
    log_dir: Path | None = None  # where a network's logFile may go (LOXI_CNI_LOG_DIR)
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """What plugin calls need so the fallback path shares the agent's state."""
        return {"LOXI_CNI_SOCKET": self.socket, "LOXI_CNI_STATE_DIR": str(self.state_dir)}

    @property
    def records_dir(self) -> Path:
        return self.state_dir / "attachments"

    def start(self) -> None:
        env = {**os.environ, "LOXI_CNI_STATE_DIR": str(self.state_dir), **self.extra_env}
        if self.log_dir is not None:
            env["LOXI_CNI_LOG_DIR"] = str(self.log_dir)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    PLUGIN,
                    "agent",
                    "--socket",
                    self.socket,
                    "--metrics",
                    f"127.0.0.1:{self.metrics_port}",
                ],
                env=env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.status().get("agent") == "up":
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"agent did not come up: {self.log.read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def status(self) -> dict[str, Any]:
        try:
            return agent_status(self.socket)
        except ValueError:  # nothing printed: an agent that crashed answering
            return {"agent": "no answer"}

    def metrics(self, timeout: float = 10) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())

    def threads(self) -> int:
        """The agent's thread count, as the kernel reports it."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no Threads line")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def new_agent(tmp_path: Path, name: str = "agent") -> Agent:
    return Agent(
        str(tmp_path / name / "agent.sock"),
        tmp_path / name / "state",
        tmp_path / f"{name}.log",
        free_port(),
        log_dir=tmp_path / name / "log",
    )
