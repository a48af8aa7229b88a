"""The speed targets (ours/reference ratios), checked where a run measured them."""

from __future__ import annotations

from typing import NamedTuple

from .stats import Measured, measured


class Target(NamedTuple):
    key: str
    level: int
    verb: str
    metric: str
    limit: float
    at_most: bool  # latency: at most the limit; throughput: at least

    @property
    def name(self) -> str:
        label = "ops/s" if self.metric == "ops" else self.metric
        return f"{self.key} {self.verb} {label} at {self.level}"


TARGETS = (
    Target("agent", 1, "ADD", "p50", 1.0, True),
    Target("agent", 1, "DEL", "p50", 0.5, True),
    Target("agent", 8, "ADD", "ops", 2.0, False),
    Target("agent", 8, "DEL", "ops", 2.0, False),
    Target("agent", 8, "ADD", "p99", 1.0, True),
    Target("standalone", 1, "ADD", "p50", 3.0, True),
)


def targets(samples: Measured) -> list[str]:
    """The report's closing lines: each target's ratio and verdict."""
    out = ["", "Targets (issue 4), ours/reference:", ""]
    for t in TARGETS:
        ours = measured(samples, t.key, t.level, t.verb, t.metric)
        value = ours / measured(samples, "ref", t.level, t.verb, t.metric)
        if value != value:
            verdict = "not measured"
        else:
            met = value <= t.limit if t.at_most else value >= t.limit
            verdict = f"{value:.2f}x, {'met' if met else 'MISSED'}"
        out.append(f"- {t.name} {'<=' if t.at_most else '>='} {t.limit}x: {verdict}")
    return out
