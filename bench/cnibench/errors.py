"""Why a run stops."""

from __future__ import annotations


class BenchError(Exception):
    """A check failed: the numbers would be meaningless, so the run stops loudly."""


class AgentUnavailable(Exception):
    """``loxi-cni agent`` could not be started (e.g. not written yet)."""
