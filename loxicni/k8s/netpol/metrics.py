"""The network policy controller's metrics, in the Prometheus text format.

Drops are counted per isolated pod and direction (the per-pod chain's last rule): a packet is
dropped because *no* policy allowed it, so a drop belongs to the pod, not to one policy; the
policies that isolate the pod are in its PodNetworkInterface and ``loxi-cni status``. Accepts
are counted per policy and direction: the first packet of every connection a policy let in or
out (the rest of the connection passes as established before any policy rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loxicni.net import policy_table as pt

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class PolicyMetrics:
    """What only the controller sees; the table counts its own transactions and rebuilds."""

    errors: int = 0
    last: float | None = None  # seconds the last change took to reach the kernel
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.last = round(seconds, 6)
        self.count += 1
        self.total += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1

    def render(
        self,
        table: pt.PolicyTable,
        policies: int,
        isolated: tuple[int, int],
        counters: dict[str, int],
        labels: dict[str, tuple[str, str, str]],
    ) -> list[str]:
        name = "loxi_cni_netpol_update_seconds"
        lines = [
            "# HELP loxi_cni_netpol_policies NetworkPolicies enforced on this node.",
            "# TYPE loxi_cni_netpol_policies gauge",
            f"loxi_cni_netpol_policies {policies}",
            "# HELP loxi_cni_netpol_isolated_pods Pods of this node isolated, by direction.",
            "# TYPE loxi_cni_netpol_isolated_pods gauge",
            f'loxi_cni_netpol_isolated_pods{{direction="ingress"}} {isolated[0]}',
            f'loxi_cni_netpol_isolated_pods{{direction="egress"}} {isolated[1]}',
            "# HELP loxi_cni_netpol_transactions_total nft transactions that changed the table.",
            "# TYPE loxi_cni_netpol_transactions_total counter",
            f"loxi_cni_netpol_transactions_total {table.transactions}",
            "# HELP loxi_cni_netpol_rebuilds_total Times the table was swapped for a new one.",
            "# TYPE loxi_cni_netpol_rebuilds_total counter",
            f"loxi_cni_netpol_rebuilds_total {table.rebuilds}",
            "# HELP loxi_cni_netpol_errors_total Failed attempts to update the table.",
            "# TYPE loxi_cni_netpol_errors_total counter",
            f"loxi_cni_netpol_errors_total {self.errors}",
            "# HELP loxi_cni_netpol_update_seconds From an API change seen to the kernel.",
            f"# TYPE {name} histogram",
        ]
        for bound, n in zip(BUCKETS, self.buckets, strict=True):
            lines.append(f'{name}_bucket{{le="{bound}"}} {n}')
        lines += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total:.6f}",
            f"{name}_count {self.count}",
            "# HELP loxi_cni_netpol_dropped_packets_total Packets dropped at an isolated pod of "
            "this node, because no policy allowed them.",
            "# TYPE loxi_cni_netpol_dropped_packets_total counter",
        ]
        allowed: list[str] = []
        for counter, packets in sorted(counters.items()):
            found = labels.get(counter)
            if found is None:
                continue
            namespace, who, direction = (_escape(x) for x in found)
            if counter.startswith("d_"):
                lines.append(
                    "loxi_cni_netpol_dropped_packets_total"
                    f'{{namespace="{namespace}",pod="{who}",direction="{direction}"}} {packets}'
                )
            elif counter.startswith(pt.allow_counter("")):
                allowed.append(
                    "loxi_cni_netpol_allowed_packets_total"
                    f'{{namespace="{namespace}",policy="{who}",direction="{direction}"}} {packets}'
                )
        lines += [
            "# HELP loxi_cni_netpol_allowed_packets_total First packets of connections a policy "
            "allowed (per IP family, summed here).",
            "# TYPE loxi_cni_netpol_allowed_packets_total counter",
            *_summed(allowed),
        ]
        return lines


def _summed(lines: list[str]) -> list[str]:
    """A policy has a counter per family: one sample per label set."""
    totals: dict[str, int] = {}
    for line in lines:
        key, value = line.rsplit(" ", 1)
        totals[key] = totals.get(key, 0) + int(value)
    return [f"{key} {value}" for key, value in totals.items()]
