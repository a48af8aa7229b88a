"""The latency distributions as a picture: one CDF per mode, verb and concurrency level."""

from __future__ import annotations

from pathlib import Path

from .settings import TITLES
from .stats import Measured


def cdf_png(samples: Measured, keys: list[str], levels: list[int], path: Path) -> Path:
    """Write the CDFs of every (verb, level) as a grid of panels to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    verbs = ("ADD", "DEL")
    fig, axes = plt.subplots(
        len(verbs), len(levels), figsize=(4.2 * len(levels), 6.4), squeeze=False
    )
    for row, verb in enumerate(verbs):
        for col, level in enumerate(levels):
            ax = axes[row][col]
            for key in keys:
                got = samples.get((key, level, verb))
                if not got or not got.latencies:
                    continue
                xs = sorted(x * 1000 for x in got.latencies)
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, where="post", label=TITLES[key])
            ax.set_xscale("log")
            ax.set_title(f"{verb}, {level} at once")
            ax.set_xlabel("latency (ms, log scale)")
            ax.set_ylabel("fraction of calls")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
