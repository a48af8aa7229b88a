"""The reference host-local on-disk store, shared byte for byte with the reference binary.

Layout (the reference's disk backend and its file lock), one directory per network,
``<dataDir>/<network>/``:

* ``<ip>``: one file per reserved address, named by Go's ``IP.String()``, created exclusively,
  holding ``containerID\\r\\nifname`` (old versions wrote the container ID alone);
* ``last_reserved_ip.<range set index>``: the last address handed out, for round-robin;
* ``lock``: flock(2)ed exclusively around every read-modify-write, by both plugins.

Beside it, outside the network directory so the reference never sees it, we keep an attachment
index ``<dataDir>/.loxi-cni/<network>/<sha256(containerID "\\n" ifname)>`` listing the addresses
an attachment was given, so DEL need not read every reservation. The index is only a hint: every
address it names is re-checked against its reservation file before removal, it is written ahead
of the reservation (so it never misses one of ours), and without an entry we fall back to the
reference's full scan (reservations made by the reference binary or an older node).

Methods other than :meth:`Store.locked` expect the caller to hold the lock.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from loxicni.base import faults, files
from loxicni.base.digest import sha256_hex
from loxicni.cni.errors import CniError, Code
from loxicni.cni.types import IPAddress

LOCK_NAME = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
INDEX_DIR_NAME = ".loxi-cni"
LINE_BREAK = "\r\n"
# Modes of the installed reference (Debian containernetworking-plugins 1.1.1); umask applies.
# Upstream moved reservation and last_reserved files to 0o600 in later releases.
RESERVATION_MODE = 0o644
LAST_RESERVED_MODE = 0o644
LOCK_MODE = 0o750  # go-filemutex creates the lock file with this
DIR_MODE = 0o755
INDEX_MODE = 0o600
_TMP_SUFFIX = ".tmp"
_RESERVE_TMP = ".reserve" + _TMP_SUFFIX
_PROBE_TMP = ".probe" + _TMP_SUFFIX


def _io_error(what: str, path: Path, err: OSError) -> CniError:
    return CniError(Code.IO_FAILURE, f"host-local: {what} {path}: {err.strerror or err}")


def _parse_name(name: str) -> IPAddress | None:
    """The address a reservation file is named after, or None if it names no address."""
    if "%" in name:
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _makedirs(path: Path) -> None:
    """``mkdir -p`` with DIR_MODE on every level created (Go's MkdirAll, unlike os.makedirs)."""
    if path.is_dir():
        return
    if path.parent != path:
        _makedirs(path.parent)
    with suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)


def _write_in_place(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _unlink_quiet(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def owner_of(content: str) -> tuple[str, str]:
    """(containerID, ifname) from a reservation file's content; ifname is "" for old files."""
    cid, _, ifname = content.strip().partition(LINE_BREAK)
    return cid, ifname


class Store:
    """One network's directory in a host-local data dir."""

    def __init__(self, data_dir: Path, network: str) -> None:
        self.dir = data_dir / network
        self.index_dir = data_dir / INDEX_DIR_NAME / network
        self._cache: _Cache | None = None  # set while locked, in a process that caches

    # -- locking ---------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the network's flock, creating the directories first (as ``disk.New`` does)."""
        try:
            _makedirs(self.dir)
            _makedirs(self.index_dir)
            fd = os.open(self.dir / LOCK_NAME, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
        except OSError as e:
            raise _io_error("cannot open lock in", self.dir, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._cache = _begin(self.dir)
                yield
            finally:
                if self._cache is not None:
                    self._cache.end()
                    self._cache = None
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def exists(self) -> bool:
        return self.dir.is_dir()

    # -- reservations ----------------------------------------------------------------------

    def _path(self, ip: IPAddress) -> Path:
        # Python's str() of an address is Go's IP.String(): dotted IPv4, RFC 5952 IPv6.
        return self.dir / str(ip)

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_bytes().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None
        except OSError as e:
            raise _io_error("cannot read", path, e) from e

    def owner(self, ip: IPAddress) -> tuple[str, str] | None:
        """Who holds ``ip`` ((containerID, ifname), ifname "" for old files), None if free."""
        if self._cache is not None and self._cache.entries is not None:
            content = self._cache.entries.get(str(ip))
        else:
            content = self._read(self._path(ip))
        return None if content is None else owner_of(content)

    def reserved_at_ns(self, ip: IPAddress) -> int:
        """When ``ip`` was reserved (its file's mtime, in ns); 0 if it is free."""
        try:
            return os.stat(self._path(ip), follow_symlinks=False).st_mtime_ns
        except FileNotFoundError:
            return 0

    def reserve(self, ip: IPAddress, container_id: str, ifname: str, range_set_index: int) -> bool:
        """Reserve ``ip`` for the attachment; False if it is taken. Records last_reserved_ip."""
        path = self._path(ip)
        cid = container_id.strip()
        try:
            if os.path.lexists(path):  # cheap pre-check: no index churn for taken addresses
                return False
            self._index_add(cid, ifname, ip)
            faults.step("ipam-index")
            content = f"{cid}{LINE_BREAK}{ifname}"
            if not self._create(path, content.encode()):
                return False
            self._cached(path.name, content)
            self._write_last_reserved(range_set_index, ip)
        except OSError as e:
            raise _io_error("cannot reserve", path, e) from e
        return True

    def _create(self, path: Path, data: bytes) -> bool:
        """Create a reservation file that is never seen half-written.

        The content is written to a temporary file in our index directory, then
        hard-linked into place: link(2) fails if the name exists, so it is as exclusive as the
        reference's O_EXCL. Where linking is impossible (another filesystem) we fall back to the
        reference's O_EXCL create-and-write.
        """
        tmp = self.index_dir / _RESERVE_TMP
        _unlink_quiet(tmp)  # a leftover may be linked to a live reservation: never reopen it
        files.write_new(tmp, data, RESERVATION_MODE, sync=False)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:
                files.write_new(path, data, RESERVATION_MODE, sync=False)
            except FileExistsError:
                return False
        finally:
            _unlink_quiet(tmp)
        return True

    def _write_last_reserved(self, range_set_index: int, ip: IPAddress) -> None:
        """Rewrite last_reserved_ip.<index> in place, as the reference does: a torn one only
        costs round-robin (it then starts from the range's beginning), while a rename over
        it would make ext4 flush the file at every ADD."""
        _write_in_place(
            self.dir / f"{LAST_RESERVED_PREFIX}{range_set_index}",
            str(ip).encode(),
            LAST_RESERVED_MODE,
        )

    def last_reserved(self, range_set_index: int) -> IPAddress | None:
        """The last address reserved from a range set, None if unknown or unreadable."""
        path = self.dir / f"{LAST_RESERVED_PREFIX}{range_set_index}"
        try:
            text = path.read_bytes().decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None  # the reference logs and starts from the beginning of the range
        return _parse_name(text)  # no stripping: Go's net.ParseIP(string(data)) does not

    def release(self, ip: IPAddress) -> bool:
        """Free ``ip`` whoever holds it; False if it was free. Keeps the index tidy."""
        path = self._path(ip)
        holder = self.owner(ip)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise _io_error("cannot release", path, e) from e
        finally:
            self._cached(path.name, None)
        if holder is not None and holder[1]:
            self._index_remove(holder[0], holder[1], ip)
        return True

    def _cached(self, name: str, content: str | None) -> None:
        """Keep the in-memory view in step with a change we made (None: removed)."""
        if self._cache is not None:
            self._cache.changed(name, content)

    def _view(self) -> dict[str, str]:
        """Every reservation file's name and content: from memory when the directory is
        watched and nobody else changed it, else read (and remembered)."""
        if self._cache is not None and self._cache.entries is not None:
            return self._cache.entries
        entries: dict[str, str] = {}
        try:
            listing = list(os.scandir(self.dir))
        except FileNotFoundError:
            return entries
        except OSError as e:
            raise _io_error("cannot list", self.dir, e) from e
        for entry in listing:
            if _parse_name(entry.name) is None or not entry.is_file(follow_symlinks=False):
                continue
            content = self._read(Path(entry.path))
            if content is not None:
                entries[entry.name] = content
        if self._cache is not None:
            self._cache.entries = entries
        return entries

    def _scan(self) -> Iterator[tuple[IPAddress, str]]:
        """Every reservation file: (address, content), by name. Only files named by an
        address count, so ``lock``, ``last_reserved_ip.*`` and strays are never taken for
        reservations."""
        for name, content in sorted(self._view().items()):
            ip = _parse_name(name)
            if ip is not None:
                yield ip, content

    def reservations(self) -> dict[IPAddress, tuple[str, str]]:
        """Every reservation and its (containerID, ifname); ifname is "" in old-format files and
        both are "" in a file a crashed writer left empty."""
        return {ip: owner_of(content) for ip, content in self._scan()}

    def ips_of(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Addresses the attachment holds, old-format files of the container included
        (the reference's GetByID). Full scan."""
        new, old = _keys(container_id, ifname)
        names = sorted(n for n, content in self._view().items() if content.strip() in (new, old))
        return [ip for ip in map(_parse_name, names) if ip is not None]

    def release_attachment(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Free everything the attachment holds, normally without a scan; returns what was freed.

        With an index entry, each listed address whose file still names this attachment is
        removed. With no entry, or one whose addresses all moved on (so the reference's
        old-format fallback may apply), scan like the reference's ReleaseByID: files naming the
        attachment, or failing any, files naming just the container.
        """
        new, old = _keys(container_id, ifname)
        released: list[IPAddress] = []
        for ip in self._index_read(container_id, ifname) or ():
            content = self._read(self._path(ip))
            if content is not None and content.strip() == new and self._unlink(ip):
                released.append(ip)
        if not released:
            found = list(self._scan())
            matches = [ip for ip, c in found if c.strip() == new]
            matches = matches or [ip for ip, c in found if c.strip() == old]
            released = [ip for ip in matches if self._unlink(ip)]
        self._index_drop(container_id, ifname)
        return released

    def _unlink(self, ip: IPAddress) -> bool:
        try:
            os.unlink(self._path(ip))
        except FileNotFoundError:
            return False
        except OSError as e:
            raise _io_error("cannot release", self._path(ip), e) from e
        finally:
            self._cached(str(ip), None)
        return True

    # -- attachment index ------------------------------------------------------------------

    def _index_path(self, container_id: str, ifname: str) -> Path:
        key = f"{container_id.strip()}\n{ifname}".encode("utf-8", "surrogateescape")
        return self.index_dir / sha256_hex(key)

    def _index_read(self, container_id: str, ifname: str) -> list[IPAddress] | None:
        """The attachment's indexed addresses; None if there is no usable entry."""
        path = self._index_path(container_id, ifname)
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("containerID") != container_id.strip() or doc.get("ifname") != ifname:
                return None
            ips = [_parse_name(s) for s in doc["ips"]]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # unreadable or foreign: behave as if there were no entry
        return [ip for ip in ips if ip is not None]

    def _index_write(self, container_id: str, ifname: str, ips: list[IPAddress]) -> None:
        """Replace the entry atomically.

        No fsync, like the reference store: a killed process loses nothing from the page cache,
        and a power loss takes every pod (and so every attachment) with it.
        """
        path = self._index_path(container_id, ifname)
        if not ips:
            self._index_drop(container_id, ifname)
            return
        doc = {"containerID": container_id.strip(), "ifname": ifname, "ips": [str(i) for i in ips]}
        # In place: a torn entry does not parse and reads as no entry, which DEL answers with
        # a scan; the index is only ever a hint.
        _write_in_place(path, json.dumps(doc).encode(), INDEX_MODE)

    def _index_add(self, container_id: str, ifname: str, ip: IPAddress) -> None:
        """Add ``ip`` before it is reserved, dropping addresses the attachment no longer holds."""
        me = (container_id.strip(), ifname)
        keep = [x for x in self._index_read(container_id, ifname) or () if self.owner(x) == me]
        if ip not in keep:
            keep.append(ip)
        self._index_write(container_id, ifname, keep)

    def _index_remove(self, container_id: str, ifname: str, ip: IPAddress) -> None:
        ips = self._index_read(container_id, ifname)
        if ips is not None and ip in ips:
            self._index_write(container_id, ifname, [x for x in ips if x != ip])

    def _index_drop(self, container_id: str, ifname: str) -> None:
        path = self._index_path(container_id, ifname)
        try:
            _unlink_quiet(path)
        except OSError as e:
            raise _io_error("cannot remove index entry", path, e) from e

    def prune_index(self, keep: set[tuple[str, str]]) -> None:
        """Drop index entries of attachments not in ``keep``, unreadable ones and temp files.

        Lists the index directory, so it belongs with GC, not with DEL.
        """
        try:
            entries = list(os.scandir(self.index_dir))
        except FileNotFoundError:
            return
        except OSError as e:
            raise _io_error("cannot list", self.index_dir, e) from e
        for entry in entries:
            path = Path(entry.path)
            if files.is_temp_name(entry.name) or entry.name.endswith(_TMP_SUFFIX):
                _unlink_quiet(path)  # a writer's debris: every writer holds the store lock
                continue
            try:
                doc = json.loads(path.read_bytes())
                attachment = (doc["containerID"], doc["ifname"])
            except (OSError, ValueError, KeyError, TypeError):
                attachment = None
            if attachment not in keep:
                _unlink_quiet(path)

    def remove_if_empty(self) -> bool:
        """Remove the network's directory and our index of it if no address is reserved there
        (an uninstall, every attachment released); False, and nothing removed, otherwise."""
        import shutil  # only here: every plugin call imports this module

        if not self.exists():
            shutil.rmtree(self.index_dir, ignore_errors=True)
            return True
        with self.locked():
            if self.reservations():
                return False
            shutil.rmtree(self.index_dir, ignore_errors=True)
            with suppress(OSError):
                self.index_dir.parent.rmdir()  # only once no network is indexed
            shutil.rmtree(self.dir)  # the lock file too: no caller may be waiting on it now
        return True

    def probe(self) -> None:
        """Prove both directories writable (create, sync and remove a file); IO_FAILURE if not."""
        for directory in (self.index_dir, self.dir):
            probe = directory / _PROBE_TMP
            try:
                _unlink_quiet(probe)
                files.write_new(probe, b"probe", INDEX_MODE, sync=True)
                os.unlink(probe)
            except OSError as e:
                raise _io_error("cannot write to", directory, e) from e


def _keys(container_id: str, ifname: str) -> tuple[str, str]:
    """Reservation contents that name the attachment: current format, and the old ID-only one."""
    cid = container_id.strip()
    return f"{cid}{LINE_BREAK}{ifname}", cid


# -- the agent's memory of each store ------------------------------------------------------

_caching = False
_caches: dict[Path, _Cache] = {}


def enable_cache() -> None:
    """Remember each store's reservations between calls (the agent): a lookup then costs no
    directory scan. Changes by anyone else are seen through inotify and force a rescan."""
    global _caching
    _caching = True


class _Cache:
    def __init__(self, directory: Path) -> None:
        from loxicni.ipam.dirwatch import DirWatch  # ctypes: only a caching process pays it

        self.watch = DirWatch(str(directory))  # before the first scan: no change goes unseen
        self.entries: dict[str, str] | None = None  # None: read the directory again
        self.touched: set[str] = set()

    def begin(self) -> None:
        """Under the lock: forget the view if anyone changed a reservation since we left."""
        seen = self.watch.changes()
        if seen is None or any(_parse_name(n) is not None for n in seen):
            self.entries = None

    def changed(self, name: str, content: str | None) -> None:
        self.touched.add(name)
        if self.entries is not None:
            if content is None:
                self.entries.pop(name, None)
            else:
                self.entries[name] = content

    def end(self) -> None:
        """Still under the lock: the events queued now are ours, unless they name something
        we did not touch (a writer that ignores the lock)."""
        seen = self.watch.changes()
        if seen is None or any(_parse_name(n) is not None and n not in self.touched for n in seen):
            self.entries = None
        self.touched.clear()


def _begin(directory: Path) -> _Cache | None:
    if not _caching:
        return None
    cache = _caches.get(directory)
    if cache is None or cache.watch.lost:
        if cache is not None:
            cache.watch.close()
        try:
            cache = _caches[directory] = _Cache(directory)
        except OSError:
            return None  # no inotify (limits): read the directory every time
    cache.begin()
    return cache
