"""Atomic writes' debris and the clock of file times (loxicni.base.files)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from loxicni.base import files


def test_a_file_written_after_a_clock_reading_is_never_stamped_earlier(tmp_path: Path) -> None:
    for i in range(2000):
        now = files.file_clock_ns()
        path = tmp_path / str(i)
        path.write_bytes(b"")
        assert path.stat().st_mtime_ns >= now, i
        path.unlink()


def test_temp_files_are_removed_by_age_whatever_their_name_says(tmp_path: Path) -> None:
    """The PID in a name means nothing across PID namespaces; only age tells a dead writer."""
    fresh_new_style = tmp_path / files.temp_name("a.json")
    fresh_pid_style = tmp_path / ".b.json.4194000.tmp"  # a PID that may live elsewhere
    old = tmp_path / files.temp_name("c.json")
    keep = tmp_path / "d.json"
    for path in (fresh_new_style, fresh_pid_style, old, keep):
        path.write_bytes(b"{}")
    long_ago = time.time() - files.STALE_AFTER - 1
    os.utime(old, (long_ago, long_ago))
    os.utime(keep, (long_ago, long_ago))
    assert files.remove_stale_temps(tmp_path) == [old.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (fresh_new_style, fresh_pid_style, keep)
    )
    assert files.remove_stale_temps(tmp_path / "missing") == []
