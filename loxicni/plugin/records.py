"""Attachment records: what each ADD made, kept until its DEL.

A record is written when an ADD starts (state "adding", with the config needed to undo it) and
marked "ready" when it succeeds; DEL removes it. After a crash (agent killed mid-ADD, node
reboot) the agent reconciles from them: an ADD that never finished, or an attachment whose host
veth is gone, is DELeted with its own config, so its address returns to the pool.

Records outlive the version that wrote them (upgrades, rollbacks), so reading is forgiving and
honest: keys this version does not know are ignored (a newer schema only adds keys), missing
optional ones take defaults, and a file that cannot be read as a record at all is
*unreadable*, never taken for absent. So is a record in a state this version does not know:
what to do with it (keep it? release it?) is the newer version's to say. Such a
file is left where it is (a newer version may read it again after a roll-forward) and its
attachment is quarantined: reported, and nothing of it is touched. Whoever would delete
something on the strength of a missing record must ask ``exists`` (any file under the key).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from loxicni.base import files, paths
from loxicni.plugin import locks
from loxicni.plugin.naming import attachment_key

ADDING = "adding"
READY = "ready"
DELETING = "deleting"  # DEL answered; the host veth is retired and being deleted
STATES = (ADDING, READY, DELETING)
SCHEMA = 2  # 1: records without "schema"; 2 adds schema, generation, bridge, vlan, result


class Unreadable(Exception):
    """A record file exists but does not hold a record this version can use."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"record {key}: {why}")
        self.key = key
        self.why = why


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
    # may not be reachable from the agent later).
    mac: str = ""
    mtu: int = 0
    gateways: list[str] = field(default_factory=list)
    bridge: str = ""
    vlan: int = 0
    # The ADD's result (CNI 1.1.0 JSON), answered again to a runtime that repeats the ADD.
    result: dict[str, Any] = field(default_factory=dict)
    # Which ADD wrote this record: a teardown decided on an older look re-checks it under the
    # attachment lock, so an ADD that got in between is never torn down.
    generation: str = ""
    schema: int = SCHEMA

    @property
    def key(self) -> str:
        return attachment_key(self.network, self.container_id, self.ifname)


def new_generation() -> str:
    return os.urandom(8).hex()


# What each field must hold; a record with any of them wrong is unreadable.
_TYPES: dict[str, type | tuple[type, ...]] = {
    "network": str,
    "container_id": str,
    "ifname": str,
    "netns": str,
    "config": dict,
    "cni_args": str,
    "cni_path": list,
    "state": str,
    "host_veth": str,
    "ips": list,
    "mac": str,
    "mtu": int,
    "gateways": list,
    "bridge": str,
    "vlan": int,
    "result": dict,
    "generation": str,
    "schema": int,
}
_REQUIRED = ("network", "container_id", "ifname", "config")
_LISTS_OF_STR = ("cni_path", "ips", "gateways")


def _from_json(key: str, doc: Any) -> Record:
    if not isinstance(doc, dict):
        raise Unreadable(key, "not a JSON object")
    known = {f.name for f in fields(Record)}
    values = {k: v for k, v in doc.items() if k in known and v is not None}
    for name in _REQUIRED:
        if name not in values:
            raise Unreadable(key, f"no {name}")
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, _TYPES[name]):
            raise Unreadable(key, f"{name} is {type(value).__name__}")
    for name in _LISTS_OF_STR:
        if not all(isinstance(v, str) for v in values.get(name, ())):
            raise Unreadable(key, f"{name} holds a non-string")
    if values.get("state", ADDING) not in STATES:
        raise Unreadable(key, f"state {values['state']!r} is not one this version knows")
    for name, parse in (("ips", ipaddress.ip_interface), ("gateways", ipaddress.ip_address)):
        for text in values.get(name, ()):
            try:
                parse(text)
            except ValueError:
                raise Unreadable(key, f"{name} holds {text[:64]!r}, not an address") from None
    values.setdefault("netns", "")
    values.setdefault("cni_args", "")
    values.setdefault("cni_path", [])
    values.setdefault("schema", 1)
    record = Record(**values)
    if record.key != key:
        raise Unreadable(key, "its contents belong to another attachment")
    return record


def _dir() -> Path:
    return Path(paths.records_dir())


def _path(key: str) -> Path:
    return _dir() / f"{key}.json"


def _temp_path(key: str) -> Path:
    # One temporary name per record: every save holds the attachment's lock, so a save
    # killed before its rename leaves a file that the next save replaces and the record's
    # removal takes along, instead of one that waits for an agent start to find it stale.
    return _dir() / files.fixed_temp_name(f"{key}.json")


def save(record: Record) -> None:
    """Write atomically: a reader never sees half a record. The attachment's lock is held."""
    directory = _dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    record.schema = SCHEMA
    # Shallow: asdict would deep-copy the config, which json.dumps only reads.
    doc = {f.name: getattr(record, f.name) for f in fields(Record)}
    files.write_atomic(
        _path(record.key), json.dumps(doc).encode(), temp_path=_temp_path(record.key)
    )


def remove(network: str, container_id: str, ifname: str) -> None:
    """Remove the record (and what a save killed mid-write left). The lock is held."""
    key = attachment_key(network, container_id, ifname)
    _path(key).unlink(missing_ok=True)
    _temp_path(key).unlink(missing_ok=True)


def mtime_ns(key: str) -> int:
    """When the record was last saved, in ns (FileNotFoundError if there is none)."""
    return os.stat(_path(key)).st_mtime_ns


def exists(key: str) -> bool:
    """Is there any file under ``key``, readable or not (then nothing of it may be deleted)."""
    return os.path.lexists(_path(key))


def load(key: str) -> Record | None:
    """The record of ``key``; None if there is none; Unreadable if the file is not a record."""
    path = _path(key)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise Unreadable(key, "is a directory") from None
    except OSError as exc:
        raise Unreadable(key, exc.strerror or str(exc)) from exc
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Unreadable(key, f"not JSON: {exc}") from None
    return _from_json(key, doc)


@dataclass
class Scan:
    records: list[Record] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)

    @property
    def held(self) -> list[Record]:
        """Attachments a pod holds: not those whose DEL was answered (their address is free,
        their retired veth about to go)."""
        return [r for r in self.records if r.state != DELETING]

    @property
    def deleting(self) -> int:
        return len(self.records) - len(self.held)


def scan() -> Scan:
    """Every record, and every entry that is not one (reported, never skipped silently)."""
    out = Scan()
    for key in keys():
        try:
            record = load(key)
        except Unreadable as exc:
            out.unreadable.append(exc)
            continue
        if record is not None:
            out.records.append(record)
    return out


def keys() -> Iterator[str]:
    try:
        entries = sorted(os.scandir(_dir()), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(".json") and not files.is_temp_name(entry.name):
            yield entry.name[: -len(".json")]


def all_records() -> list[Record]:
    """The records that can be read (see ``scan`` for the ones that cannot)."""
    return scan().records


def remove_stale_temp_files() -> list[str]:
    """Temp files of writers that died mid-save. A record is saved only under its
    attachment's lock, so the temp file of an attachment whose lock is free is debris,
    whoever wrote it (a PID cannot tell: the writer may live in another PID namespace). A
    temp file whose name names no attachment goes by age."""
    removed: list[str] = []
    try:
        names = os.listdir(_dir())
    except FileNotFoundError:
        return removed
    for name in names:
        key = _key_of_temp(name)
        if key is None or locks.held(key):
            continue
        try:
            os.unlink(_dir() / name)
        except FileNotFoundError:
            continue  # its writer was done after all: renamed into place
        removed.append(name)
    return removed + files.remove_stale_temps(_dir())


def _key_of_temp(name: str) -> str | None:
    """The attachment key of a temp file of ``save`` (``.<key>.json.<random>.tmp``)."""
    if not files.is_temp_name(name):
        return None
    target = name[len(files.TEMP_PREFIX) :].rsplit(".", 2)[0]
    key, dot_json, rest = target.partition(".json")
    if rest or not dot_json or len(key) != 32 or not all(c in "0123456789abcdef" for c in key):
        return None
    return key
