"""Undo steps of a running ADD: each step registers how to take itself back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loxicni.base.logs import get_logger

log = get_logger(__name__)


@dataclass
class Undo:
    steps: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)

    def push(self, what: str, fn: Callable[[], Any]) -> None:
        self.steps.append((what, fn))

    def unwind(self) -> None:
        """Run the steps in reverse; a failing step is logged and the rest still run (the
        original error is what the runtime sees)."""
        for what, fn in reversed(self.steps):
            try:
                fn()
            except Exception:
                log.exception("rollback step failed: %s", what)
        self.steps.clear()
