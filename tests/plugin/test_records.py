"""Attachment records across versions: a record a newer version wrote is read by an older one
as far as it understands it, and what it cannot understand is left alone, never acted on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loxicni.base import paths
from loxicni.plugin import records


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOXI_CNI_STATE_DIR", str(tmp_path))
    return tmp_path


def _written(**doc: object) -> str:
    """Save a record, then rewrite its file with `doc`'s keys as another version would."""
    record = records.Record("pods", "c1", "eth0", "/run/netns/x", {"type": "loxi-cni"}, "", [])
    record.state = records.READY
    record.host_veth = "loxi0123"
    records.save(record)
    path = Path(paths.records_dir()) / f"{record.key}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **doc}))
    return record.key


def test_a_newer_schema_with_keys_unknown_here_reads_as_what_it_shares() -> None:
    key = _written(schema=99, vethQueues=4, future={"nested": [1, 2]})
    record = records.load(key)
    assert record is not None
    assert (record.state, record.host_veth, record.schema) == ("ready", "loxi0123", 99)


def test_a_state_unknown_here_is_unreadable_so_nothing_acts_on_it() -> None:
    key = _written(schema=3, state="migrating")
    with pytest.raises(records.Unreadable, match="state 'migrating'"):
        records.load(key)
    scan = records.scan()
    assert scan.records == [] and [bad.key for bad in scan.unreadable] == [key]
