"""Test-only fault injection: a process kills itself at a named step.

Never set in production. The chaos run (``tests/chaos``) sets ``LOXI_CNI_FAULTS`` to a
directory and arms a step by creating a file named after it there. The first process (agent or
in-process plugin) to reach an armed step claims the file (``unlink`` succeeds for exactly one)
and dies with SIGKILL, as if the OOM killer or a power cut had stopped it right there: the
crash windows between the steps of ADD and DEL become reachable on purpose, not by luck.

Unset, a step costs one environment lookup. Standard library only, and no ``signal`` import
(its enums cost start-up time on every plugin call).
"""

from __future__ import annotations

import os

ENV = "LOXI_CNI_FAULTS"
_SIGKILL = 9  # Linux; signal.SIGKILL without importing signal

# Every step a run can arm, in the order a call meets them.
STEPS = (
    "add-record",  # the record says "adding"; nothing else exists yet
    "add-bridge",  # the bridge exists
    "add-veth",  # the veth pair exists, its host end not yet labelled or on the bridge
    "add-port",  # the host end is labelled and on the bridge
    "add-ipam",  # the addresses are reserved
    "add-addresses",  # the pod interface is up with its addresses and routes
    "add-masq",  # the masquerade elements exist
    "add-ready",  # the record says "ready"; the answer is not sent yet
    "del-masq",  # the masquerade elements are gone
    "del-veth",  # the veth pair is gone
    "del-ipam",  # the addresses are released
    "del-record",  # the record is gone; the lock file not yet
    "gc-attachment",  # GC tore one attachment down, its lock still held
    "gc-ipam",  # GC is about to release the store's stale reservations
    "reconcile-release",  # the starting agent released one attachment
    "ipam-index",  # the store's index names an address whose reservation is not written
    "write-temp",  # an atomic write's temporary file is complete, not yet renamed
)


def step(name: str) -> None:
    """Die here if the step ``name`` is armed (see the module docstring); else return."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    try:
        os.unlink(os.path.join(directory, name))
    except OSError:
        return  # not armed, or another process claimed it first
    os.kill(os.getpid(), _SIGKILL)
