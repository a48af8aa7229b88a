"""Commands run to completion within a bound, and our own child processes stopped by pid."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class CommandError(AssertionError):
    """A command failed: the message carries everything needed to see why."""


def sh(
    cmd: Sequence[str | Path],
    *,
    timeout: float = 60,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion within ``timeout`` seconds; on failure say what it printed."""
    argv = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            f"timed out after {timeout}s: {argv}\n{exc.stdout!r}\n{exc.stderr!r}"
        ) from None
    if check and proc.returncode != 0:
        raise CommandError(
            f"exit {proc.returncode}: {argv}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def stop_process(proc: subprocess.Popen[Any], grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: our own child, by its pid only."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def kill9(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL our own child and reap it: a crash, as the tests of recovery need one."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
