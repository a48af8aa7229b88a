"""The IPAM the bridge plugin talks to: built-in host-local, or a delegated executable.

One face for both, so ADD/DEL/CHECK/GC/STATUS read the same whichever serves the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection

from loxicni.cni.errors import CniError, Code
from loxicni.cni.request import Request
from loxicni.cni.result import result_from_json
from loxicni.cni.types import IPAddress, Result
from loxicni.ipam import delegate, hostlocal
from loxicni.ipam.config import HostLocalConfig, parse_host_local

HOST_LOCAL = "host-local"


def _env(req: Request) -> dict[str, str]:
    """The CNI environment of ``req``, rebuilt so the agent can delegate for its clients too."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    env.update(
        CNI_COMMAND=req.command,
        CNI_CONTAINERID=req.container_id,
        CNI_NETNS=req.netns,
        CNI_IFNAME=req.ifname,
        CNI_ARGS=req.args_string(),
        CNI_PATH=":".join(req.path),
    )
    return env


class Ipam:
    """IPAM for one request."""

    def __init__(self, req: Request, ipam_type: str) -> None:
        self.req = req
        self.type = ipam_type
        self._host_local: HostLocalConfig | None = None
        if ipam_type == HOST_LOCAL:
            self._host_local = parse_host_local(req.config, dict(req.args))
        else:
            delegate.find_plugin(ipam_type, req.path)  # refuse path-like types up front

    def _run(self, command: str) -> bytes:
        return delegate.run(
            self.type, self.req.path, command, _env(self.req), self.req.config_bytes
        )

    def add(self) -> Result:
        if self._host_local is not None:
            return hostlocal.allocate(self._host_local, self.req.container_id, self.req.ifname)
        out = self._run("ADD")
        try:
            return result_from_json(json.loads(out))
        except ValueError as exc:
            self.delete()
            raise CniError(
                Code.IPAM_FAILURE,
                f"IPAM plugin {self.type} printed no JSON result",
                out.decode(errors="replace")[:2000],
            ) from exc
        except CniError:
            self.delete()
            raise

    def delete(self) -> None:
        if self._host_local is not None:
            hostlocal.release(self._host_local, self.req.container_id, self.req.ifname)
        else:
            self._run("DEL")

    def check(self) -> list[IPAddress] | None:
        """The addresses the store holds for the attachment (None when delegated)."""
        if self._host_local is not None:
            return hostlocal.check(self._host_local, self.req.container_id, self.req.ifname)
        self._run("CHECK")
        return None

    def gc(
        self,
        valid: Collection[tuple[str, str]],
        started_ns: int,
        keep: Callable[[str, str], bool] | None = None,
    ) -> None:
        """Release what no valid attachment holds; keep what appeared after ``started_ns``
        and what ``keep(container_id, ifname)`` holds. A delegated IPAM plugin gets the
        runtime's list as it came."""
        if self._host_local is not None:
            hostlocal.gc(self._host_local, valid, started_ns, keep)
        else:
            self._run("GC")

    def status(self) -> None:
        if self._host_local is not None:
            hostlocal.status(self._host_local)
        else:
            self._run("STATUS")
