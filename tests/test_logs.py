"""Lazy logging: a fresh plugin process imports ``logging`` only when a message is due."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loxicni.base import logs

ROOT = str(Path(__file__).resolve().parents[1])


def _fresh(code: str, level: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter after ``setup_logging()``, as the plugin does."""
    env = {k: v for k, v in os.environ.items() if k != "LOXI_CNI_LOG_LEVEL"}
    if level is not None:
        env["LOXI_CNI_LOG_LEVEL"] = level
    prelude = (
        f"import sys; sys.path.insert(0, {ROOT!r})\n"
        "from loxicni.base.logs import get_logger, setup_logging\n"
        "setup_logging()\n"
        "log = get_logger('loxi-cni')\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )


def test_below_the_level_nothing_is_imported_or_printed() -> None:
    out = _fresh("log.info('quiet %s', 1); log.debug('x'); print('logging' in sys.modules)")
    assert out.stdout.strip() == "False" and out.stderr == ""


def test_at_the_level_the_message_is_formatted_on_stderr() -> None:
    out = _fresh("log.info('ADD %s', 'x'); log.warning('careful %d', 2)", level="info")
    lines = out.stderr.splitlines()
    assert len(lines) == 2
    assert " INFO loxi-cni[" in lines[0] and lines[0].endswith("] ADD x")
    assert " WARNING loxi-cni[" in lines[1] and lines[1].endswith("careful 2")


def test_exception_carries_the_traceback() -> None:
    code = "try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('boom %s', 'here')\n"
    out = _fresh(code)
    assert " ERROR loxi-cni[" in out.stderr and "boom here" in out.stderr
    assert "ZeroDivisionError" in out.stderr and "Traceback" in out.stderr


def test_unknown_level_name_means_warning() -> None:
    out = _fresh("log.info('no'); log.warning('yes')", level="chatty")
    assert "no" not in out.stderr and "yes" in out.stderr


def test_a_log_file_gets_info_and_stderr_keeps_its_handler(tmp_path: Path) -> None:
    path = tmp_path / "l.log"
    out = _fresh(
        f"from loxicni.base.logs import add_log_file\nadd_log_file({str(path)!r})\nlog.info('hi')"
    )
    assert "hi" in path.read_text() and "hi" in out.stderr


def test_with_logging_in_use_it_is_a_plain_logger(caplog: pytest.LogCaptureFixture) -> None:
    log = logs.get_logger("loxi-cni.test")
    with caplog.at_level(logging.DEBUG, logger="loxi-cni.test"):
        log.debug("d %s", 1)
        log.error("e")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "d 1"),
        ("ERROR", "e"),
    ]
    # the record names the caller, not the logs module
    assert {r.funcName for r in caplog.records} == {"test_with_logging_in_use_it_is_a_plain_logger"}
