"""The link reaper (the agent's batched veth deletion) never leaves a DEL waiting forever:
its thread outlives any error, comes back if it dies, and every wait is bounded."""

from __future__ import annotations

import errno
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from loxicni.net import links, reaper
from loxicni.net.reaper import LinkReaper
from loxicni.net.rtnl import Rtnl


@pytest.fixture
def ours() -> Iterator[list[str]]:
    """Two links of our own on the host (bridges: this kernel has no dummy driver), gone
    afterwards whatever happened."""
    tag = uuid.uuid4().hex[:8]
    names = [f"lxrp{tag}a", f"lxrp{tag}b"]
    for name in names:
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    yield names
    for name in names:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def bounded(call: Callable[[], Any], timeout: float) -> Any:
    """``call()``'s result or exception, or AssertionError if it has not returned in time (it
    runs on in a daemon thread, where a hang cannot hold up the tests)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"still waiting after {timeout} s"
    return outcome[0]


def misbehave(monkeypatch: pytest.MonkeyPatch, before: Callable[[int], object]) -> list[int]:
    """``links.delete_group`` with ``before(n)`` run ahead of the real n-th call (it may block,
    or raise instead of deleting); the groups it was called with, in order."""
    real = links.delete_group
    calls: list[int] = []

    def delete_group(ipr: Rtnl, group: int) -> bool:
        calls.append(group)
        before(len(calls))
        return real(ipr, group)

    monkeypatch.setattr(links, "delete_group", delete_group)
    return calls


def present(name: str) -> bool:
    with Rtnl() as ipr:
        return links.get(ipr, name) is not None


def index_of(ipr: Rtnl, name: str) -> int:
    link = links.get(ipr, name)
    assert link is not None
    return link.index


def test_the_reaper_survives_an_error_of_any_kind(
    ours: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def flaky(call: int) -> None:
        if call == 1:
            raise ValueError("a bug outside netlink")

    calls = misbehave(monkeypatch, flaky)
    deleter = LinkReaper()
    with Rtnl() as ipr:
        failed = bounded(lambda: deleter.delete(ipr, index_of(ipr, ours[0])), timeout=5)
        assert isinstance(failed, OSError) and failed.errno == errno.EIO, failed
        assert bounded(lambda: deleter.delete(ipr, index_of(ipr, ours[1])), timeout=5) is True
    assert not present(ours[1])
    assert len(calls) == 2


# The reaper thread is made to die here: pytest reports that, and it is the point.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_wedged_or_dead_reaper_holds_no_del_forever(
    ours: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reaper, "WAIT", 0.5)
    unwedge = threading.Event()

    def wedged_then_dead_then_fine(call: int) -> None:
        if call == 1:
            unwedge.wait(30)  # a kernel that does not answer
        elif call == 2:
            raise SystemExit("the thread ends")

    misbehave(monkeypatch, wedged_then_dead_then_fine)
    deleter = LinkReaper()
    with Rtnl() as ipr:
        first = index_of(ipr, ours[0])
        waited = bounded(lambda: deleter.delete(ipr, first), timeout=5)
        assert isinstance(waited, OSError) and waited.errno == errno.ETIMEDOUT, waited
        unwedge.set()  # the kernel answers late: the link goes all the same
        assert bounded(lambda: _until(lambda: not present(ours[0])), timeout=5)

        second = index_of(ipr, ours[1])
        died = bounded(lambda: deleter.delete(ipr, second), timeout=5)
        assert isinstance(died, OSError) and died.errno == errno.ETIMEDOUT, died
        # The next DEL finds the thread dead and starts another (given time to, on a busy host).
        monkeypatch.setattr(reaper, "WAIT", 10.0)
        assert bounded(lambda: deleter.delete(ipr, second), timeout=15) is True
    assert not present(ours[1])


def test_another_reaper_leaves_this_one_s_links_alone(
    ours: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reapers in one netns (two agents during a restart, test agents side by side): a
    group delete of one leaves the links the other has tagged alone."""
    unwedge = threading.Event()
    first, second = LinkReaper(), LinkReaper()

    def first_is_slow(_call: int) -> None:
        if threading.current_thread() is first._thread:
            unwedge.wait(10)

    entered = misbehave(monkeypatch, first_is_slow)
    with Rtnl() as ipr:
        index = index_of(ipr, ours[0])
        pending = threading.Thread(target=first.delete, args=(ipr, index), daemon=True)
        pending.start()
        bounded(lambda: _until(lambda: bool(entered)), timeout=5)  # tagged, delete under way
        with Rtnl() as other:
            assert bounded(lambda: second.delete(other, index_of(other, ours[1])), 5) is True
        assert present(ours[0]) and not present(ours[1])
        unwedge.set()
        pending.join(5)
    assert not present(ours[0])


def _until(check: Callable[[], bool]) -> bool:
    while not check():
        threading.Event().wait(0.02)
    return True


def test_a_failed_follow_up_is_tried_again_until_it_succeeds(
    ours: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What follows a background deletion (dropping the attachment's record) may fail while
    the state fs is read-only for a while; the DEL has answered, so the reaper must retry
    (found by the chaos run, tests/chaos, on a read-only state fs)."""
    monkeypatch.setattr(reaper, "FOLLOW_UP_RETRY", 0.05)
    attempts: list[int] = []
    done = threading.Event()

    def follow_up() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError(errno.EROFS, "Read-only file system")
        done.set()

    deleter = LinkReaper()
    with Rtnl() as ipr:
        assert deleter.delete_later(ipr, index_of(ipr, ours[0]), [], follow_up)
    assert done.wait(10), attempts
    assert len(attempts) == 3 and not present(ours[0])
