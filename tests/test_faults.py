"""The test-only fault steps: inert unless armed, and then fatal to exactly one process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loxicni.base import faults

ROOT = Path(__file__).resolve().parents[1]


def _reach(step: str, directory: Path | None) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter that reaches ``step`` and then prints 'after'."""
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if directory is not None:
        env[faults.ENV] = str(directory)
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        f"from loxicni.base import faults\nfaults.step({step!r})\nprint('after')\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, env=env
    )


def test_unset_or_unarmed_steps_do_nothing(tmp_path: Path) -> None:
    assert _reach("add-veth", None).stdout == "after\n"
    assert _reach("add-veth", tmp_path).stdout == "after\n"


def test_an_armed_step_kills_the_first_process_to_reach_it(tmp_path: Path) -> None:
    (tmp_path / "add-veth").touch()
    first = _reach("add-veth", tmp_path)
    assert first.returncode == -signal.SIGKILL and first.stdout == ""
    assert not (tmp_path / "add-veth").exists()  # claimed: the next process lives
    assert _reach("add-veth", tmp_path).stdout == "after\n"


def test_every_step_in_the_code_is_listed_and_every_listed_step_is_in_the_code() -> None:
    used = set()
    for path in (ROOT / "loxicni").rglob("*.py"):
        used |= set(re.findall(r'faults\.step\("([a-z-]+)"\)', path.read_text()))
    assert used == set(faults.STEPS)


def test_a_step_costs_nothing_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.step("add-veth") is None
