"""VERSION, exec to exit: podman asks it before every ADD and DEL, so it is on the path too."""

from __future__ import annotations

import subprocess
import time

from .stats import percentile

STDIN = b'{"cniVersion":"1.0.0"}'


def _once(plugin: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [plugin],
        input=STDIN,
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or b"supportedVersions" not in proc.stdout:
        raise RuntimeError(f"{plugin} VERSION failed: {proc.stdout!r} {proc.stderr!r}")
    return elapsed


def version_p50(plugins: dict[str, str], calls: int = 200) -> dict[str, float]:
    """p50 ms of VERSION per plugin, the plugins taking turns call by call."""
    times: dict[str, list[float]] = {key: [] for key in plugins}
    for _ in range(calls):
        for key, plugin in plugins.items():
            times[key].append(_once(plugin))
    return {key: percentile(values, 50) * 1000 for key, values in times.items()}
