"""Attachment records: what each ADD made, kept until its DEL.

A record is written when an ADD starts (state "adding", with the config needed to undo it) and
marked "ready" when it succeeds; DEL removes it. After a crash (agent killed mid-ADD, node
reboot) the agent reconciles from them: an ADD that never finished, or an attachment whose host
veth is gone (its netns died and took the pair with it), is DELeted with its own config, so its
address returns to the pool.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ADDING = "adding"
READY = "ready"


def state_dir() -> Path:
    return Path(os.environ.get("LOXI_CNI_STATE_DIR", "/var/lib/loxi-cni")) / "attachments"


@dataclass
class Record:
    network: str
    container_id: str
    ifname: str
    netns: str
    config: dict[str, Any]  # the network config of the ADD (enough to run its DEL)
    cni_args: str
    cni_path: list[str]
    state: str = ADDING
    host_veth: str = ""
    ips: list[str] = field(default_factory=list)
    # The pod interface as ADD left it, for the agent's Kubernetes resources (the pod's netns
    # may not be reachable from the agent later). Absent from records of older versions.
    mac: str = ""
    mtu: int = 0
    gateways: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return record_key(self.network, self.container_id, self.ifname)


def record_key(network: str, container_id: str, ifname: str) -> str:
    return hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()[:32]


def _path(key: str) -> Path:
    return state_dir() / f"{key}.json"


def save(record: Record) -> None:
    """Write atomically (temp file + rename): a reader never sees half a record."""
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / f".{record.key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, _path(record.key))


def remove(network: str, container_id: str, ifname: str) -> None:
    _path(record_key(network, container_id, ifname)).unlink(missing_ok=True)


def load(key: str) -> Record | None:
    try:
        return Record(**json.loads(_path(key).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None  # not ours or corrupt: reconcile reports it


def all_records() -> Iterator[Record]:
    directory = state_dir()
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        record = load(path.stem)
        if record is not None:
            yield record


def remove_stale_temp_files() -> list[Path]:
    """Temp files of writers that died mid-save (their pid is in the name)."""
    directory = state_dir()
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for tmp in directory.glob(".*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[1])
            os.kill(pid, 0)
            continue  # its writer is alive
        except (ValueError, IndexError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
