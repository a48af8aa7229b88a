"""Latency samples and what is read from them: percentiles, throughput, the harness floor."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    calls: int = 0
    wall: float = 0.0
    cpu: float = 0.0  # seconds, every process involved

    def add(self, latencies: list[float], wall: float, cpu: float = 0.0) -> None:
        self.latencies += latencies
        self.calls += len(latencies)
        self.wall += wall
        self.cpu += cpu

    def metric(self, name: str) -> float:
        if name == "p50":
            return percentile(self.latencies, 50) * 1000
        if name == "p99":
            return percentile(self.latencies, 99) * 1000
        if name == "cpu":
            return self.cpu / self.calls * 1000 if self.calls else float("nan")
        return self.calls / self.wall if self.wall else float("nan")


# (mode key, concurrency level, verb) -> what was measured there.
Measured = dict[tuple[str, int, str], Samples]


def measured(samples: Measured, key: str, level: int, verb: str, metric: str) -> float:
    """One metric of one cell; NaN where this run did not measure it."""
    got = samples.get((key, level, verb))
    return got.metric(metric) if got else float("nan")


def harness_floor(pods: int = 20) -> float:
    """p50 of exec'ing /bin/true the same way: the part of every number that is not the plugin."""
    times = []
    for _ in range(pods):
        start = time.perf_counter()
        subprocess.run(["/bin/true"], input=b"{}", capture_output=True, env={"CNI_COMMAND": "ADD"})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
