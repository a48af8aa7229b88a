"""An agent in Kubernetes mode that a test starts itself from the installed plugin (the
one-node ``tests.k8s.cluster.Cluster``, each node of ``tests.k8s.simcluster``): one layout of
its work dir, one way to start, ask and stop it, one way to exec the plugin against it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .plugin import PLUGIN, agent_status
from .processes import kill9, stop_process


def status_or_empty(socket: str) -> dict[str, Any]:
    """The agent's status, or {} while it gives none (starting, stopped, crashed)."""
    try:
        return agent_status(socket)
    except ValueError:
        return {}


def conflist_conf(path: Path) -> dict[str, Any]:
    """What libcni sends loxi-cni for the one-plugin conflist at ``path``."""
    conflist = json.loads(path.read_text())
    (plugin,) = conflist["plugins"]
    return {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}


class LocalAgent:
    """Mixed into a dataclass that gives ``workdir`` (where the agent keeps its socket, state,
    CNI config, host-local store and log) and ``env`` (what a plugin exec needs to reach it)."""

    proc: subprocess.Popen[bytes] | None

    if TYPE_CHECKING:  # the subclass's field or property; none here, for dataclasses' sake

        @property
        def workdir(self) -> Path: ...

        @property
        def env(self) -> dict[str, str]: ...

    @property
    def socket(self) -> str:
        return str(self.workdir / "run" / "agent.sock")

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "net.d"

    @property
    def conf_path(self) -> Path:
        return self.conf_dir / "10-loxi-cni.conflist"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "ipam"

    @property
    def log(self) -> Path:
        return self.workdir / "agent.log"

    def write_template(self, template: dict[str, Any]) -> Path:
        """``template`` (a conflist with one plugin), storing in this agent's host-local store,
        where the agent's --cni-conf-template finds it."""
        plugin = dict(template["plugins"][0])
        plugin["ipam"] = {**plugin["ipam"], "dataDir": str(self.data_dir)}
        path = self.workdir / "template.json"
        path.write_text(json.dumps({**template, "plugins": [plugin]}))
        return path

    def agent_argv(
        self, kubeconfig: Path, node: str, template: Path, *, metrics: str, grace_period: str
    ) -> list[str]:
        """The agent's command line in this work dir; the caller adds its own options."""
        return [
            PLUGIN, "agent", "--socket", self.socket, "--metrics", metrics,
            "--kubeconfig", str(kubeconfig), "--node-name", node,
            "--cni-conf-dir", str(self.conf_dir), "--cni-conf-template", str(template),
            "--cni-data-root", str(self.workdir),  # the template's dataDir is below it
            "--resync", "2", "--grace-period", grace_period,
        ]  # fmt: skip

    def spawn_agent(self, argv: Sequence[str]) -> None:
        """Start ``argv`` with this agent's environment, its output appended to ``log``."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, env={**os.environ, **self.env}, stdout=log, stderr=log
            )

    def check_running(self, who: str) -> None:
        """Fail at once, with its log, when the agent has exited (a wait would time out)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{who} exited:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def status(self) -> dict[str, Any]:
        return status_or_empty(self.socket)

    def kill_agent(self) -> None:
        """A crash (SIGKILL); nothing when no agent was started."""
        if self.proc is not None:
            kill9(self.proc)

    def stop_agent(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=15)

    def conf(self) -> dict[str, Any]:
        """What libcni sends loxi-cni for the conflist the agent wrote."""
        return conflist_conf(self.conf_path)

    def exec_cni(
        self,
        command: str,
        container_id: str,
        netns: str,
        *,
        wrapper: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
        what: str = "",
    ) -> dict[str, Any]:
        """Exec the installed plugin (under ``wrapper``: ``ip netns exec``, say) as a runtime
        does for ``container_id``'s eth0; its result ({} for none). Fails naming ``what``."""
        env = {
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin",
            **(extra_env or {}),
            **self.env,
        }
        proc = subprocess.run(
            [*wrapper, PLUGIN], input=json.dumps(self.conf()).encode(), env=env,
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, f"{what or command}: {proc.stdout!r} {proc.stderr!r}"
        return dict(json.loads(proc.stdout)) if proc.stdout.strip() else {}
