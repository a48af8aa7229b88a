"""Reading attachment records written by another version, or damaged: known fields are read,
unknown ones ignored, anything that is not a usable record is unreadable, never absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loxicni.base import files
from loxicni.plugin import records
from loxicni.plugin.locks import attachment_lock
from loxicni.plugin.naming import attachment_key


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOXI_CNI_STATE_DIR", str(tmp_path))
    return tmp_path / "attachments"


def record(**fields: Any) -> records.Record:
    base: dict[str, Any] = {
        "network": "pods",
        "container_id": "c1",
        "ifname": "eth0",
        "netns": "/var/run/netns/p1",
        "config": {"name": "pods", "type": "loxi-cni", "ipam": {"type": "host-local"}},
        "cni_args": "",
        "cni_path": ["/opt/cni/bin"],
        "state": records.READY,
        "host_veth": "loxi0123456789a",
        "ips": ["10.1.0.2/24"],
        "gateways": ["10.1.0.1"],
    }
    base.update(fields)
    return records.Record(**base)


def write(state_dir: Path, key: str, doc: Any) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / f"{key}.json").write_text(json.dumps(doc))


KEY = attachment_key("pods", "c1", "eth0")


def test_a_saved_record_reads_back() -> None:
    saved = record(generation=records.new_generation())
    records.save(saved)
    assert records.load(KEY) == saved
    assert records.load(attachment_key("pods", "c2", "eth0")) is None


def test_fields_of_a_newer_version_are_ignored(state_dir: Path) -> None:
    records.save(record())
    doc = json.loads((state_dir / f"{KEY}.json").read_text())
    write(state_dir, KEY, {**doc, "schema": 9, "sriovDevice": {"pci": "0000:01:00.1"}})
    loaded = records.load(KEY)
    assert loaded is not None and loaded.ips == ["10.1.0.2/24"] and loaded.schema == 9


def test_an_older_version_s_record_takes_defaults(state_dir: Path) -> None:
    write(state_dir, KEY, {"network": "pods", "container_id": "c1", "ifname": "eth0",
                           "config": {"name": "pods"}, "ips": None, "mac": None})  # fmt: skip
    loaded = records.load(KEY)
    assert loaded is not None
    assert (loaded.ips, loaded.mac, loaded.state, loaded.schema) == ([], "", records.ADDING, 1)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"mtu": "1500"}, "mtu is str"),
        ({"state": True}, "state is bool"),
        ({"config": []}, "config is list"),
        ({"ips": "10.1.0.2/24"}, "ips is str"),
        ({"ips": [7]}, "ips holds a non-string"),
        ({"ips": ["notanip"]}, "ips holds 'notanip', not an address"),
        ({"gateways": ["10.1.0.0/24"]}, "not an address"),
        ({"container_id": "c2"}, "belong to another attachment"),
    ],
)
def test_a_field_of_the_wrong_kind_makes_it_unreadable(
    state_dir: Path, change: dict[str, Any], why: str
) -> None:
    records.save(record())
    doc = json.loads((state_dir / f"{KEY}.json").read_text())
    write(state_dir, KEY, {**doc, **change})
    with pytest.raises(records.Unreadable, match=why):
        records.load(KEY)
    assert records.exists(KEY)


def test_entries_that_are_no_record(state_dir: Path) -> None:
    records.save(record())
    (state_dir / "dir.json").mkdir()
    (state_dir / "bytes.json").write_bytes(b"\xff\xfe")
    (state_dir / "deep.json").write_text("[" * 100_000)
    (state_dir / "list.json").write_text("[]")
    (state_dir / "half.json").write_text('{"network": "pods"}')
    (state_dir / "notes.txt").write_text("not a record's name")
    scan = records.scan()
    assert [r.key for r in scan.records] == [KEY]
    why = {bad.key: bad.why for bad in scan.unreadable}
    assert sorted(why) == ["bytes", "deep", "dir", "half", "list"]
    assert why["bytes"].startswith("not JSON") and why["deep"].startswith("not JSON")
    assert (why["dir"], why["half"], why["list"]) == (
        "is a directory",
        "no container_id",
        "not a JSON object",
    )


def test_temp_files_of_saves_go_when_their_attachment_is_free(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOXI_CNI_RUN_DIR", str(tmp_path / "run"))
    records.save(record())
    busy = attachment_key("pods", "busy", "eth0")
    free = attachment_key("pods", "free", "eth0")
    at_work = state_dir / files.temp_name(f"{busy}.json")
    debris = state_dir / files.temp_name(f"{free}.json")
    unnamed = state_dir / files.temp_name("notes")
    for path in (at_work, debris, unnamed):
        path.write_text("{")
    with attachment_lock("pods", "busy", "eth0"):
        assert records.remove_stale_temp_files() == [debris.name]
    assert at_work.exists() and unnamed.exists()  # the unnamed one waits for its age
    assert records.remove_stale_temp_files() == [at_work.name]
    assert [r.key for r in records.scan().records] == [KEY]
