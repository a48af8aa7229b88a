"""Logging: stderr always (runtimes capture it), a file when the config names one."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s loxi-cni[%(process)d] %(message)s"


def setup_logging() -> None:
    level = os.environ.get("LOXI_CNI_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level if level in logging._nameToLevel else "WARNING", format=FORMAT)


def add_log_file(path: str) -> None:
    """Also log to ``path`` (the config's ``logFile``); once per process and path."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == os.path.abspath(
            path
        ):
            return
    try:
        handler = logging.FileHandler(path)
    except OSError as exc:
        logging.getLogger("loxi-cni").warning("cannot open logFile %s: %s", path, exc)
        return
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
