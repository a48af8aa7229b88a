"""Bounded polling: a test that waits on the host fails with a name instead of hanging CI."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 30, interval: float = 0.1
) -> T:
    """Poll ``probe`` every ``interval`` seconds until it returns something truthy; fail naming
    ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
