"""Store: the reference's on-disk format, and our attachment index beside it."""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loxicni.cni.errors import CniError, Code
from loxicni.ipam import hostlocal
from loxicni.ipam.store import Store
from tests.ipam.helpers import leftovers, netconf, parse

A = ipaddress.ip_address


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path, "net")


def entry_path(tmp_path: Path, cid: str, ifname: str) -> Path:
    digest = hashlib.sha256(f"{cid}\n{ifname}".encode()).hexdigest()
    return tmp_path / ".loxi-cni" / "net" / digest


def test_layout_and_file_format(store: Store, tmp_path: Path) -> None:
    with store.locked():
        assert store.reserve(A("10.0.0.2"), "ctr1", "eth0", 0)
        assert store.reserve(A("fd00::2"), "ctr1", "eth0", 1)
        assert not store.reserve(A("10.0.0.2"), "ctr2", "eth0", 0)
    net = tmp_path / "net"
    assert (net / "10.0.0.2").read_bytes() == b"ctr1\r\neth0"
    assert (net / "fd00::2").read_bytes() == b"ctr1\r\neth0"
    assert (net / "last_reserved_ip.0").read_bytes() == b"10.0.0.2"
    assert (net / "last_reserved_ip.1").read_bytes() == b"fd00::2"
    umask = os.umask(0)
    os.umask(umask)
    assert (net / "10.0.0.2").stat().st_mode & 0o777 == 0o644 & ~umask
    assert (net / "lock").stat().st_mode & 0o777 == 0o750 & ~umask
    # nothing of ours inside the network directory
    assert sorted(p.name for p in net.iterdir()) == [
        "10.0.0.2",
        "fd00::2",
        "last_reserved_ip.0",
        "last_reserved_ip.1",
        "lock",
    ]
    doc = json.loads(entry_path(tmp_path, "ctr1", "eth0").read_text())
    assert doc == {"containerID": "ctr1", "ifname": "eth0", "ips": ["10.0.0.2", "fd00::2"]}
    assert entry_path(tmp_path, "ctr1", "eth0").stat().st_mode & 0o777 == 0o600


def test_file_names_are_go_ip_strings(store: Store, tmp_path: Path) -> None:
    with store.locked():
        store.reserve(A("2001:0db8:0000:0000:0001:0000:0000:0001"), "c", "eth0", 0)
        store.reserve(A("2001:db8:0:1:1:1:1:1"), "c", "eth0", 0)
    names = {p.name for p in (tmp_path / "net").iterdir()}
    assert {"2001:db8::1:0:0:1", "2001:db8:0:1:1:1:1:1"} <= names


def test_last_reserved_is_read_like_go(store: Store, tmp_path: Path) -> None:
    with store.locked():
        assert store.last_reserved(0) is None
        (tmp_path / "net" / "last_reserved_ip.0").write_text("10.0.0.9")
        assert store.last_reserved(0) == A("10.0.0.9")
        (tmp_path / "net" / "last_reserved_ip.0").write_text("10.0.0.9\n")  # ParseIP fails
        assert store.last_reserved(0) is None
        (tmp_path / "net" / "last_reserved_ip.0").write_text("")
        assert store.last_reserved(0) is None


def test_reservations_understand_old_and_torn_files(store: Store, tmp_path: Path) -> None:
    with store.locked():
        store.reserve(A("10.0.0.2"), "new", "eth1", 0)
    net = tmp_path / "net"
    (net / "10.0.0.3").write_text("old-ctr")  # written by host-local before ifname existed
    (net / "10.0.0.4").write_text("")  # a crashed writer
    (net / "not-an-ip").write_text("new\r\neth1")
    with store.locked():
        assert store.reservations() == {
            A("10.0.0.2"): ("new", "eth1"),
            A("10.0.0.3"): ("old-ctr", ""),
            A("10.0.0.4"): ("", ""),
        }
        assert store.ips_of("old-ctr", "eth7") == [A("10.0.0.3")]
        assert store.ips_of("new", "eth1") == [A("10.0.0.2")]
        assert store.ips_of("new", "eth0") == []


def test_release_by_attachment_uses_the_index_without_scanning(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.locked():
        store.reserve(A("10.0.0.2"), "a", "eth0", 0)
        store.reserve(A("fd00::2"), "a", "eth0", 1)
        store.reserve(A("10.0.0.3"), "b", "eth0", 0)

    def no_scan(self: Store) -> None:
        raise AssertionError("release_attachment scanned the directory")

    monkeypatch.setattr(Store, "_scan", no_scan)
    monkeypatch.setattr(os, "scandir", no_scan)
    monkeypatch.setattr(os, "listdir", no_scan)
    with store.locked():
        assert sorted(map(str, store.release_attachment("a", "eth0"))) == ["10.0.0.2", "fd00::2"]
    assert not entry_path(tmp_path, "a", "eth0").exists()
    assert (tmp_path / "net" / "10.0.0.3").exists()


def test_release_falls_back_to_the_scan_without_an_entry(store: Store, tmp_path: Path) -> None:
    net = tmp_path / "net"
    with store.locked():
        pass
    (net / "10.0.0.5").write_bytes(b"ref\r\neth0")  # as the reference binary writes it
    (net / "10.0.0.6").write_bytes(b"ref\r\neth1")
    with store.locked():
        assert store.release_attachment("ref", "eth0") == [A("10.0.0.5")]
        assert store.release_attachment("ref", "eth0") == []
    assert (net / "10.0.0.6").exists()


def test_old_format_files_are_released_only_when_nothing_new_matches(
    store: Store, tmp_path: Path
) -> None:
    net = tmp_path / "net"
    with store.locked():
        store.reserve(A("10.0.0.2"), "ctr", "eth0", 0)
    (net / "10.0.0.3").write_text("ctr")
    with store.locked():
        assert store.release_attachment("ctr", "eth0") == [A("10.0.0.2")]
        assert store.release_attachment("ctr", "eth0") == [A("10.0.0.3")]


def test_index_entries_never_release_someone_elses_address(store: Store, tmp_path: Path) -> None:
    with store.locked():
        store.reserve(A("10.0.0.2"), "a", "eth0", 0)
        store.release(A("10.0.0.2"))
        assert not entry_path(tmp_path, "a", "eth0").exists()  # release keeps the index tidy
        store.reserve(A("10.0.0.2"), "b", "eth0", 0)
    # a stale entry, as a crash between removing the file and the entry would leave
    entry_path(tmp_path, "a", "eth0").write_text(
        json.dumps({"containerID": "a", "ifname": "eth0", "ips": ["10.0.0.2"]})
    )
    with store.locked():
        assert store.release_attachment("a", "eth0") == []
        assert store.owner(A("10.0.0.2")) == ("b", "eth0")


def test_foreign_or_corrupt_entries_are_ignored(store: Store, tmp_path: Path) -> None:
    with store.locked():
        store.reserve(A("10.0.0.2"), "a", "eth0", 0)
    entry_path(tmp_path, "a", "eth0").write_text("{not json")
    with store.locked():
        assert store.release_attachment("a", "eth0") == [A("10.0.0.2")]  # via the scan


def test_a_crashed_reserve_cannot_corrupt_a_live_reservation(store: Store, tmp_path: Path) -> None:
    """A temp file left linked to a live reservation must be replaced, never rewritten."""
    with store.locked():
        store.reserve(A("10.0.0.2"), "a", "eth0", 0)
    tmp = tmp_path / ".loxi-cni" / "net" / ".reserve.tmp"
    os.link(tmp_path / "net" / "10.0.0.2", tmp)
    (tmp_path / ".loxi-cni" / "net" / "garbage.tmp").write_text("half")
    with store.locked():
        assert store.reserve(A("10.0.0.3"), "b", "eth0", 0)
        assert store.owner(A("10.0.0.2")) == ("a", "eth0")
        assert store.owner(A("10.0.0.3")) == ("b", "eth0")
        assert not tmp.exists()
        store.prune_index({("a", "eth0"), ("b", "eth0")})
    assert sorted(p.name for p in (tmp_path / ".loxi-cni" / "net").iterdir()) == sorted(
        [entry_path(tmp_path, "a", "eth0").name, entry_path(tmp_path, "b", "eth0").name]
    )


def test_prune_index_drops_invalid_attachments(store: Store, tmp_path: Path) -> None:
    with store.locked():
        store.reserve(A("10.0.0.2"), "a", "eth0", 0)
        store.reserve(A("10.0.0.3"), "b", "eth0", 0)
        store.prune_index({("b", "eth0")})
    assert not entry_path(tmp_path, "a", "eth0").exists()
    assert entry_path(tmp_path, "b", "eth0").exists()


def test_probe_leaves_nothing_behind(store: Store, tmp_path: Path) -> None:
    with store.locked():
        store.probe()
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == ["lock"]
    assert list((tmp_path / ".loxi-cni" / "net").iterdir()) == []


def test_killed_allocators_leave_nothing_half_written(tmp_path: Path) -> None:
    """SIGKILL allocating processes at random moments: every reservation file is whole, and
    every one is in its attachment's index entry (written ahead), so DEL needs no scan."""
    conf = netconf(tmp_path / "data", [[{"subnet": "10.7.0.0/24"}], [{"subnet": "fd07::/120"}]])
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(conf))
    driver = Path(__file__).with_name("_driver.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rng = random.Random(1234)
    cids = []
    for round_ in range(12):
        batch = [f"k{round_}-{i}" for i in range(6)]
        cids += batch
        proc = subprocess.Popen(
            [sys.executable, str(driver), str(conf_path), "add", *batch],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stdin.close()

    store = Store(tmp_path / "data", "net")
    with store.locked():
        held = store.reservations()
        assert held, "no allocation ever completed; the test proves nothing"
        for ip, (cid, ifname) in held.items():
            assert cid in cids and ifname == "eth0", (ip, cid, ifname)  # whole, never torn
            assert ip in (store._index_read(cid, ifname) or []), ip  # never missing from index
    cfg = parse(conf)
    for cid in cids:
        hostlocal.release(cfg, cid, "eth0")
    assert leftovers(tmp_path / "data" / "net") == set()
    hostlocal.gc(cfg, [])
    assert list((tmp_path / "data" / ".loxi-cni" / "net").iterdir()) == []


def test_cross_filesystem_fallbacks(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the index dir cannot link/rename into the network dir, write in place like the
    reference (O_EXCL create; plain rewrite of last_reserved_ip)."""

    def exdev(*_: object, **__: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).parent == tmp_path / "net":
            exdev()
        real_replace(src, dst)

    monkeypatch.setattr(os, "link", exdev)
    monkeypatch.setattr(os, "replace", replace)
    with store.locked():
        assert store.reserve(A("10.0.0.2"), "a", "eth0", 0)
        assert not store.reserve(A("10.0.0.2"), "b", "eth0", 0)
        assert store.reserve(A("10.0.0.3"), "b", "eth0", 0)
    assert (tmp_path / "net" / "10.0.0.2").read_bytes() == b"a\r\neth0"
    assert (tmp_path / "net" / "last_reserved_ip.0").read_bytes() == b"10.0.0.3"
    assert [
        p.name for p in (tmp_path / ".loxi-cni" / "net").iterdir() if p.name.endswith(".tmp")
    ] == []


def test_filesystem_errors_are_io_failures(tmp_path: Path) -> None:
    (tmp_path / "net").write_text("a file where the network directory should be")
    with pytest.raises(CniError) as info, Store(tmp_path, "net").locked():
        pass
    assert info.value.code == Code.IO_FAILURE


# --- the agent's in-memory view, kept honest by inotify --------------------------------------


@pytest.fixture
def cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Store caching on, as in the agent, for this test only."""
    from loxicni.ipam import store as store_module

    monkeypatch.setattr(store_module, "_caching", True)
    monkeypatch.setattr(store_module, "_caches", {})


def test_view_sees_what_other_writers_did_between_calls(
    cached: None, store: Store, tmp_path: Path
) -> None:
    with store.locked():
        assert store.reserve(A("10.0.0.2"), "ours", "eth0", 0)
        assert store.ips_of("theirs", "eth0") == []
    # The reference binary, under the lock, reserves and frees between our calls.
    net = tmp_path / "net"
    with store.locked():  # stands in for its flock
        (net / "10.0.0.3").write_bytes(b"theirs\r\neth0")
    with store.locked():
        assert store.ips_of("theirs", "eth0") == [A("10.0.0.3")]
        assert store.owner(A("10.0.0.3")) == ("theirs", "eth0")
    os.unlink(net / "10.0.0.3")
    with store.locked():
        assert store.ips_of("theirs", "eth0") == []
        assert store.reservations() == {A("10.0.0.2"): ("ours", "eth0")}


def test_a_writer_ignoring_the_lock_drops_the_view(
    cached: None, store: Store, tmp_path: Path
) -> None:
    with store.locked():
        assert store.reserve(A("10.0.0.2"), "ours", "eth0", 0)
        store.ips_of("x", "eth0")  # the view is read now
        (tmp_path / "net" / "10.0.0.9").write_bytes(b"sneaky\r\neth0")  # mid-section
        assert store.reserve(A("10.0.0.4"), "ours", "eth1", 0)
    with store.locked():
        assert store.ips_of("sneaky", "eth0") == [A("10.0.0.9")]


def test_view_matches_a_fresh_read_after_random_operations(cached: None, tmp_path: Path) -> None:
    rng = random.Random(7)
    cached_store, fresh = Store(tmp_path, "net"), Store(tmp_path, "net")
    for step in range(300):
        ip = A(f"10.0.0.{rng.randrange(2, 40)}")
        with cached_store.locked():
            if rng.random() < 0.5:
                cached_store.reserve(ip, f"c{step % 7}", "eth0", 0)
            elif rng.random() < 0.5:
                cached_store.release(ip)
            else:
                cached_store.release_attachment(f"c{rng.randrange(7)}", "eth0")
            if rng.random() < 0.1:  # another writer, between our calls
                (tmp_path / "net" / f"10.0.1.{step % 50}").write_bytes(b"other\r\neth0")
        with cached_store.locked():
            seen = cached_store.reservations()
        from loxicni.ipam import store as store_module

        store_module._caching = False
        with fresh.locked():
            assert fresh.reservations() == seen, step
        store_module._caching = True


def test_view_is_reused_while_nobody_else_writes(
    cached: None, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    listings: list[object] = []
    real = os.scandir

    def counting(path: object) -> object:
        listings.append(path)
        return real(path)  # type: ignore[call-overload]

    from loxicni.ipam import store as store_module

    monkeypatch.setattr(store_module.os, "scandir", counting)
    for n in range(20):
        with store.locked():
            assert store.ips_of(f"c{n}", "eth0") == []
            assert store.reserve(A(f"10.0.0.{n + 2}"), f"c{n}", "eth0", 0)
    assert len(listings) == 1  # one read of the directory, then memory
