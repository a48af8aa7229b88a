"""The chaos run at a size for `make test` (about a minute); `make chaos` runs the long one.

The seed is kept because at this size it found two leaks, fixed since: the lock file that a
release (the agent's reconcile after a reboot) re-created after losing the race to the
attachment's DEL, and a record's temporary file left by a save killed before its rename.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.run import FAULT_KINDS, Settings, report, run

SEED = 2
CALLS = 400


def test_chaos_never_breaks_a_live_pod_never_leaks_and_never_hangs() -> None:
    if os.geteuid() != 0:
        pytest.fail("the chaos run needs root (netns, tmpfs, nftables)")
    settings = Settings(seed=SEED, calls=CALLS, checkpoints=2)
    stats = run(settings)
    text = report(settings, stats)
    print(text)
    assert stats.leaks == [] and stats.broken == [] and stats.problems == [], text
    assert stats.hangs == 0, text
    assert stats.total >= CALLS and set(stats.calls) == {"ADD", "DEL", "CHECK", "GC"}, text
    # Every kind of fault happened (a step kill counts once its armed step was reached).
    for kind in FAULT_KINDS:
        if not kind.endswith("step-kill"):
            assert stats.faults[kind] >= 1, text
    assert stats.faults["agent-step-kill"] + stats.faults["plugin-step-kill"] >= 1, text
