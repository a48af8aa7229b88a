"""Agent metrics, kept in memory and rendered in the Prometheus text format.

Hand-written rather than prometheus_client: a dozen counters and one histogram family do not
justify a dependency on the agent, and the text format is small and stable.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class PoolUsage:
    network: str
    range: str
    in_use: int
    free: int


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[tuple[str, int]] = Counter()
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        # More metric families, rendered after ours (e.g. the cross-node overlay's).
        self.sources: list[Callable[[], list[str]]] = []

    def observe(self, command: str, seconds: float, code: int) -> None:
        with self._lock:
            self.requests[command] += 1
            if code:
                self.errors[(command, code)] += 1
            buckets = self._buckets.setdefault(command, [0] * len(BUCKETS))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self._sums[command] = self._sums.get(command, 0.0) + seconds

    def served(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def render(
        self,
        attachments: int,
        pools: Iterable[PoolUsage],
        quarantined: int = 0,
        deleting: int = 0,
    ) -> str:
        lines = [
            "# HELP loxi_cni_uptime_seconds Seconds since the agent started.",
            "# TYPE loxi_cni_uptime_seconds gauge",
            f"loxi_cni_uptime_seconds {time.time() - self.started:.3f}",
            "# HELP loxi_cni_requests_total CNI requests served, by command.",
            "# TYPE loxi_cni_requests_total counter",
        ]
        with self._lock:
            for command, n in sorted(self.requests.items()):
                lines.append(f'loxi_cni_requests_total{{command="{command}"}} {n}')
            lines += [
                "# HELP loxi_cni_errors_total CNI requests answered with an error, by code.",
                "# TYPE loxi_cni_errors_total counter",
            ]
            for (command, code), n in sorted(self.errors.items()):
                lines.append(f'loxi_cni_errors_total{{command="{command}",code="{code}"}} {n}')
            lines += [
                "# HELP loxi_cni_request_seconds Latency of CNI requests in the agent.",
                "# TYPE loxi_cni_request_seconds histogram",
            ]
            for command, buckets in sorted(self._buckets.items()):
                for bound, n in zip(BUCKETS, buckets, strict=True):
                    lines.append(
                        f'loxi_cni_request_seconds_bucket{{command="{command}",le="{bound}"}} {n}'
                    )
                total = self.requests[command]
                lines.append(
                    f'loxi_cni_request_seconds_bucket{{command="{command}",le="+Inf"}} {total}'
                )
                seconds = self._sums.get(command, 0.0)
                lines.append(f'loxi_cni_request_seconds_sum{{command="{command}"}} {seconds:.6f}')
                lines.append(f'loxi_cni_request_seconds_count{{command="{command}"}} {total}')
        lines += [
            "# HELP loxi_cni_attachments Attachments (pod interfaces) held on this node.",
            "# TYPE loxi_cni_attachments gauge",
            f"loxi_cni_attachments {attachments}",
            "# HELP loxi_cni_deletions_pending Attachments DELeted whose host veth is still being"
            " deleted.",
            "# TYPE loxi_cni_deletions_pending gauge",
            f"loxi_cni_deletions_pending {deleting}",
            "# HELP loxi_cni_quarantined_records Attachment records that cannot be read.",
            "# TYPE loxi_cni_quarantined_records gauge",
            f"loxi_cni_quarantined_records {quarantined}",
            "# HELP loxi_cni_addresses_in_use Addresses reserved, per network and range.",
            "# TYPE loxi_cni_addresses_in_use gauge",
        ]
        pools = list(pools)
        for pool in pools:
            labels = f'network="{pool.network}",range="{pool.range}"'
            lines.append(f"loxi_cni_addresses_in_use{{{labels}}} {pool.in_use}")
        lines += [
            "# HELP loxi_cni_addresses_free Addresses still free, per network and range.",
            "# TYPE loxi_cni_addresses_free gauge",
        ]
        for pool in pools:
            labels = f'network="{pool.network}",range="{pool.range}"'
            lines.append(f"loxi_cni_addresses_free{{{labels}}} {pool.free}")
        for source in self.sources:
            lines += source()
        return "\n".join(lines) + "\n"
