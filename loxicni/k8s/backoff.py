"""Exponential backoff with full jitter, for retrying the API server.

Jitter spreads the retries of a whole cluster's agents after an API server restart, instead of
every node reconnecting in the same instant.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        """The wait before the next try; each call counts one more failure."""
        ceiling = min(self.cap, self.first * (2**self.failures))
        self.failures = min(self.failures + 1, 32)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0
