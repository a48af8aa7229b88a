"""Batched link deletion for the agent: concurrent DELs share one kernel teardown.

Deleting a veth costs ~16 ms, nearly all of it RCU grace periods the kernel waits for once per
unregister batch, whatever the batch's size. The reaper tags each link with the current batch's
link group and deletes the whole group with one RTM_DELLINK; DELs that arrive while a batch is
being torn down form the next one. A lone DEL is deleted at once, so latency never grows.

``delete`` waits for its batch. ``delete_later`` does not: the link is taken out of service at
once (out of its bridge, down) and deleted with the next batch, so a DEL can answer before the
kernel's grace periods. Whoever must not run before such a deletion is done (an ADD wanting
the same attachment, or the same interface name in the same netns) waits on its *fences*.

The reaper thread survives any error (the batch reports it to its waiters), is restarted if it
ever dies, and no waiter waits longer than WAIT: a DEL holding its attachment's lock must never
hang on it.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Callable, Hashable, Iterable

from loxicni.base.logs import get_logger
from loxicni.net import links
from loxicni.net.rtnl import NetlinkError, Rtnl

log = get_logger(__name__)

# Link groups 0x4C000000-0x4CFFFFFF ("L"), far from the usual small numbers. A group delete
# removes every link of the group in the netns, whoever tagged it: so each reaper takes a
# random one of 4096 blocks of groups, and another reaper in the same netns (a second agent
# during a restart, agents of tests side by side) does not delete links of this one's
# batches, unless both drew the same block.
GROUP_BASE = 0x4C00_0000
GROUPS_PER_REAPER = 0x1000  # batches before the serial wraps; one takes milliseconds
WAIT = 30.0  # seconds; a group delete takes milliseconds
# A follow-up that fails (the state fs read-only or full for a while) is tried again after
# this, doubling up to FOLLOW_UP_RETRY_MAX: its DEL has answered, nobody else will do it.
FOLLOW_UP_RETRY = 1.0
FOLLOW_UP_RETRY_MAX = 60.0


class _Batch:
    def __init__(self, group: int) -> None:
        self.group = group
        self.count = 0
        self.done = threading.Event()
        self.error: OSError | None = None
        self.fences: list[Hashable] = []
        self.callbacks: list[Callable[[], None]] = []


class LinkReaper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._serial = 0
        blocks = 0x100_0000 // GROUPS_PER_REAPER
        self._block = GROUP_BASE + GROUPS_PER_REAPER * (int.from_bytes(os.urandom(2)) % blocks)
        self._batch = self._new_batch()
        self._pending: dict[Hashable, _Batch] = {}  # fence -> the batch that lifts it
        self._finish: queue.Queue[tuple[Callable[[], None], float]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._finisher = threading.Thread(target=self._run_finisher, name="reaper-finish")
        self._finisher.daemon = True
        self._finisher.start()
        self._ensure_thread()

    def _new_batch(self) -> _Batch:
        self._serial = (self._serial + 1) % GROUPS_PER_REAPER
        return _Batch(self._block + self._serial)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            if self._thread is not None:
                log.error("link reaper thread died; restarting it")
            self._thread = threading.Thread(target=self._run, name="link-reaper", daemon=True)
            self._thread.start()

    def delete(self, ipr: Rtnl, index: int) -> bool:
        """Delete link ``index`` of ``ipr``'s netns; False if it was already gone."""
        with self._lock:
            self._ensure_thread()
            batch = self._batch
            if not links.set_group(ipr, index, batch.group):
                return False
            batch.count += 1
            self._wake.set()
        if not batch.done.wait(WAIT):
            raise NetlinkError(errno.ETIMEDOUT, "the link reaper did not finish in time")
        if batch.error is not None:
            raise batch.error
        return True

    def delete_later(
        self,
        ipr: Rtnl,
        index: int,
        fences: Iterable[Hashable],
        on_done: Callable[[], None] | None = None,
    ) -> bool:
        """Retire bridge port ``index`` now and delete it in the background; ``fences`` hold
        until it is gone, then ``on_done`` runs (in another thread). False if it was gone."""
        with self._lock:
            self._ensure_thread()
            batch = self._batch
            if not links.retire(ipr, index, batch.group):
                return False
            batch.count += 1
            for fence in fences:
                batch.fences.append(fence)
                self._pending[fence] = batch
            if on_done is not None:
                batch.callbacks.append(on_done)
            self._wake.set()
        return True

    def wait(self, fence: Hashable, timeout: float = WAIT) -> bool:
        """Wait until no deletion holds ``fence``; False if one still does after ``timeout``."""
        with self._lock:
            batch = self._pending.get(fence)
        return batch is None or batch.done.wait(timeout)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _run(self) -> None:
        with Rtnl() as ipr:
            while True:
                self._wake.wait()
                with self._lock:
                    self._wake.clear()
                    batch = self._batch
                    if not batch.count:
                        continue
                    self._batch = self._new_batch()
                try:
                    links.delete_group(ipr, batch.group)
                except OSError as exc:
                    batch.error = exc
                    log.error("link reaper: deleting group %#x failed: %s", batch.group, exc)
                except Exception as exc:  # keep serving: the waiters must hear of it
                    log.exception("link reaper: deleting group %#x failed", batch.group)
                    batch.error = OSError(errno.EIO, str(exc))
                with self._lock:
                    for fence in batch.fences:
                        if self._pending.get(fence) is batch:
                            del self._pending[fence]
                batch.done.set()
                for callback in batch.callbacks:
                    self._finish.put((callback, FOLLOW_UP_RETRY))

    def _run_finisher(self) -> None:
        """Runs what follows a deletion (it may take locks a fenced ADD holds while it waits
        for the deletion itself, so never in the reaper's own thread)."""
        while True:
            callback, retry = self._finish.get()
            try:
                callback()
            except Exception:
                # Dropped, it would leave the attachment's "deleting" record and lock file
                # until the agent restarts or a GC comes, though its DEL answered success.
                log.exception("link reaper: follow-up of a deletion failed; again in %.0f s", retry)
                later = (callback, min(retry * 2, FOLLOW_UP_RETRY_MAX))
                timer = threading.Timer(retry, self._finish.put, (later,))
                timer.daemon = True
                timer.start()
