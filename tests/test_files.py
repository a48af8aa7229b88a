"""Atomic writes' debris and the clock of file times (loxicni.base.files)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from loxicni.base import files


def test_a_time_mark_splits_the_files_written_before_from_those_after(tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    for i in range(100):
        before.write_bytes(b"")
        mark = files.file_time_mark_ns()
        after.write_bytes(b"")
        assert before.stat().st_mtime_ns < mark <= after.stat().st_mtime_ns, i


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


def test_append_in_a_directory_goes_nowhere_else(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    fd = files.open_append_in(str(logs), str(logs / "a.log"))  # the directory is made
    os.write(fd, b"one\n")
    os.close(fd)
    fd = files.open_append_in(str(logs), str(logs / "a.log"))
    os.write(fd, b"two\n")
    os.close(fd)
    assert (logs / "a.log").read_text() == "one\ntwo\n"
    assert (logs / "a.log").stat().st_mode & 0o777 == 0o640

    outside = tmp_path / "outside"
    outside.write_text("kept\n")
    (logs / "link.log").symlink_to(outside)
    os.link(outside, logs / "hard.log")
    os.mkfifo(logs / "fifo.log")
    (tmp_path / "linked-dir").symlink_to(logs)
    refused = [
        (logs, logs / "link.log"),  # a symlink to a file elsewhere
        (logs, logs / "hard.log"),  # another name of a file elsewhere
        (logs, logs / "fifo.log"),  # would block a writer without a reader
        (tmp_path / "linked-dir", tmp_path / "linked-dir" / "a.log"),  # the directory a link
        (logs, logs / "sub" / "a.log"),
        (logs, Path(f"{logs}/../outside")),
        (logs, Path("a.log")),
        (logs, logs),
    ]
    for directory, path in refused:
        try:
            fd = files.open_append_in(str(directory), str(path))
        except (OSError, ValueError):
            continue
        os.close(fd)
        raise AssertionError(f"{path} was opened")
    assert outside.read_text() == "kept\n"
