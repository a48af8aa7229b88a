"""The speed targets (ours/reference ratios), checked where a run measured them."""

from __future__ import annotations

from typing import NamedTuple

from .stats import Measured, measured


class Target(NamedTuple):
    key: str
    level: int
    verbs: tuple[str, ...]  # more than one: their values add up (an ADD+DEL cycle)
    metric: str
    limit: float
    at_most: bool  # latency and CPU: at most the limit; throughput: at least

    @property
    def name(self) -> str:
        label = {"ops": "ops/s", "cpu": "CPU per call"}.get(self.metric, self.metric)
        return f"{self.key} {'+'.join(self.verbs)} {label} at {self.level}"


TARGETS = (
    Target("agent", 1, ("ADD",), "p50", 0.8, True),
    Target("agent", 1, ("DEL",), "p50", 0.5, True),
    Target("agent", 8, ("ADD",), "ops", 2.0, False),
    Target("agent", 8, ("ADD",), "p99", 1.0, True),
    Target("agent", 1, ("ADD", "DEL"), "cpu", 1.0, True),
    Target("standalone", 1, ("ADD",), "p50", 3.0, True),
)
VERSION_LIMIT = 1.0


def _value(samples: Measured, key: str, t: Target) -> float:
    return sum(measured(samples, key, t.level, verb, t.metric) for verb in t.verbs)


def _verdict(value: float, limit: float, at_most: bool) -> str:
    if value != value:
        return "not measured"
    met = value <= limit if at_most else value >= limit
    return f"{value:.2f}x, {'MET' if met else 'MISSED'}"


def targets(samples: Measured, version: dict[str, float] | None = None) -> list[str]:
    """The report's closing lines: each target's ratio and verdict."""
    out = ["", "Targets, ours/reference:", ""]
    for t in TARGETS:
        value = _value(samples, t.key, t) / _value(samples, "ref", t)
        out.append(
            f"- {t.name} {'<=' if t.at_most else '>='} {t.limit}x: "
            + _verdict(value, t.limit, t.at_most)
        )
    if version:
        ratio = version.get("ours", float("nan")) / version.get("ref", float("nan"))
        out.append(
            f"- VERSION p50 (exec to exit; ours {version.get('ours', float('nan')):.2f} ms, "
            f"reference {version.get('ref', float('nan')):.2f} ms) <= {VERSION_LIMIT}x: "
            + _verdict(ratio, VERSION_LIMIT, True)
        )
    return out
