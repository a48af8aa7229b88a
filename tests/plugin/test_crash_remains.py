"""What a crash leaves of an attachment's files is removed with the attachment.

All were found by the chaos run (tests/chaos): a record save killed between writing its
temporary file and renaming it; a release (agent reconcile) that lost the race to the
attachment's DEL and re-created its lock file; a GC killed after tearing an attachment down,
before letting go of its lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loxicni.base import faults
from loxicni.plugin import locks, records
from loxicni.plugin.release import CHANGED, release

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LOXI_CNI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOXI_CNI_RUN_DIR", str(tmp_path / "run"))
    yield tmp_path


def _record() -> records.Record:
    conf = {
        "cniVersion": "1.1.0",
        "name": "crashnet",
        "type": "loxi-cni",
        "ipam": {"type": "host-local", "subnet": "10.1.2.0/24"},
    }
    return records.Record(
        network="crashnet",
        container_id="c1",
        ifname="eth0",
        netns="",
        config=conf,
        cni_args="",
        cni_path=["/opt/cni/bin"],
        generation=records.new_generation(),
    )


def _save_killed_before_rename(dirs: Path, record: records.Record) -> None:
    armed = dirs / "faults"
    armed.mkdir()
    (armed / "write-temp").touch()
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from loxicni.plugin import records\n"
        f"records.save(records.Record(**{json.dumps(record.__dict__)}))\n"
    )
    env = {**os.environ, faults.ENV: str(armed)}
    proc = subprocess.run([sys.executable, "-I", "-c", code], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr


def test_a_save_killed_mid_write_leaves_nothing_after_the_record_is_removed(dirs: Path) -> None:
    record = _record()
    _save_killed_before_rename(dirs, record)
    attachments = dirs / "state" / "attachments"
    assert [p.name for p in attachments.iterdir()] == [f".{record.key}.json.locked.tmp"]
    assert records.load(record.key) is None and list(records.keys()) == []
    records.remove(record.network, record.container_id, record.ifname)
    assert list(attachments.iterdir()) == []


def test_the_next_save_replaces_the_remains_of_a_killed_one(dirs: Path) -> None:
    record = _record()
    _save_killed_before_rename(dirs, record)
    records.save(record)
    attachments = dirs / "state" / "attachments"
    assert [p.name for p in attachments.iterdir()] == [f"{record.key}.json"]


def test_a_release_that_finds_the_attachment_gone_leaves_no_lock_file(dirs: Path) -> None:
    record = _record()  # scanned by a starting agent, then DELeted before it got the lock
    assert release(record).status == CHANGED
    assert list((dirs / "run" / "locks").iterdir()) == []


def test_unused_lock_files_are_swept_and_held_or_used_ones_kept(dirs: Path) -> None:
    live, dead, busy = _record(), _record(), _record()
    dead.container_id, busy.container_id = "c2", "c3"
    records.save(live)
    for r in (live, dead):  # the dead one's holder was killed after removing its record
        with locks.attachment_lock(r.network, r.container_id, r.ifname):
            pass
    with locks.attachment_lock(busy.network, busy.container_id, busy.ifname):
        # held by a running call (an ADD before its record is written): never touched
        assert locks.remove_unused(records.exists) == [dead.key]
    assert sorted(p.name for p in (dirs / "run" / "locks").iterdir()) == sorted(
        [live.key, busy.key]
    )
