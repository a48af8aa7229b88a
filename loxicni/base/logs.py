"""Logging: stderr always (runtimes capture it), a file when the config names one.

A plugin run in-process serves one call, so the config's ``logFile`` simply becomes a handler
of the process (``add_log_file``). The agent serves every network's calls as root: there a
``logFile`` gets the lines of its own request only (``request_log``), and only if it names a
file directly in the log directory, opened without following symlinks
(``confine_log_files``); any other is ignored, with a warning on the agent's log.

Importing ``logging`` (with the ``traceback``, ``string`` and friends it pulls in) costs ~3-5 ms
of every plugin start, while a call that goes well logs nothing at the default level. So, in a
process that has not imported ``logging`` yet, ``setup_logging`` only records the level, and the
loggers of ``get_logger`` import and configure ``logging`` when the first message at or above it
comes; below it they drop the message, as ``logging`` would have. Once ``logging`` is in use (the
agent, the tests) they are plain ``logging`` loggers.
"""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loxicni.base import files

FORMAT = "%(asctime)s %(levelname)s loxi-cni[%(process)d] %(message)s"
# logging's level names (logging._nameToLevel), known here without importing it.
LEVELS = {
    "CRITICAL": 50,
    "FATAL": 50,
    "ERROR": 40,
    "WARN": 30,
    "WARNING": 30,
    "INFO": 20,
    "DEBUG": 10,
    "NOTSET": 0,
}

_pending: int | None = None  # the level of a setup_logging() not applied yet


def setup_logging() -> None:
    """Log to stderr at LOXI_CNI_LOG_LEVEL (default WARNING)."""
    global _pending
    _pending = LEVELS.get(os.environ.get("LOXI_CNI_LOG_LEVEL", "WARNING").upper(), 30)
    if "logging" in sys.modules:
        _apply()


def _apply() -> None:
    """Import ``logging`` and apply a pending ``setup_logging``."""
    global _pending
    import logging

    if _pending is not None:
        level, _pending = _pending, None
        logging.basicConfig(level=level, format=FORMAT)


class Logger:
    """The methods of ``logging.Logger`` that loxi-cni uses, importing ``logging`` on demand."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(self, level: int, method: str, msg: object, args: Any, kwargs: Any) -> None:
        if _pending is not None and level < _pending and "logging" not in sys.modules:
            return
        _apply()
        import logging

        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 2  # the caller, not this module
        getattr(logging.getLogger(self.name), method)(msg, *args, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(10, "debug", msg, args, kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(20, "info", msg, args, kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(30, "warning", msg, args, kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(40, "error", msg, args, kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(40, "exception", msg, args, kwargs)

    def critical(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(50, "critical", msg, args, kwargs)


def get_logger(name: str) -> Logger:
    return Logger(name)


def add_log_file(path: str) -> None:
    """Also log to ``path`` (the config's ``logFile``); once per process and path."""
    _apply()  # stderr first, as without a file
    import logging

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


def use_log_file(path: str) -> None:
    """The config of the call being served names ``path`` as its ``logFile``."""
    if _confined_to is None:
        add_log_file(path)
        return
    scope = _request.get()
    if scope is None or scope.fd is not None:
        return  # not serving a request (reconcile, a release), or already opened
    try:
        scope.fd = files.open_append_in(_confined_to, path)
    except (OSError, ValueError) as exc:
        if path not in _warned:  # once per path, not once per request
            if len(_warned) < 256:
                _warned.add(path)
            get_logger(__name__).warning(
                "logFile %s ignored: the agent writes only files directly in %s (%s)",
                path,
                _confined_to,
                exc,
            )


class _RequestLog:
    def __init__(self) -> None:
        self.fd: int | None = None


_confined_to: str | None = None  # set in the agent: where a logFile may be
_request: contextvars.ContextVar[_RequestLog | None] = contextvars.ContextVar(
    "request_log", default=None
)
_warned: set[str] = set()


def confine_log_files(directory: str) -> None:
    """Agent mode: a ``logFile`` is written per request (``request_log``) and only directly
    in ``directory``. Call once, before the agent sets its handlers' format."""
    global _confined_to
    _apply()
    import logging

    class RequestFile(logging.Handler):
        """Writes a record to the log file of the request the emitting thread serves."""

        def emit(self, record: logging.LogRecord) -> None:
            scope = _request.get()
            if scope is None or scope.fd is None:
                return
            try:
                line = self.format(record) + "\n"
                os.write(scope.fd, line.encode("utf-8", "backslashreplace"))
            except Exception:
                self.handleError(record)

    _confined_to = directory
    logging.getLogger().addHandler(RequestFile())


@contextmanager
def request_log() -> Iterator[None]:
    """Serve one request: its config's ``logFile``, if any, gets its lines until the end."""
    scope = _RequestLog()
    token = _request.set(scope)
    try:
        yield
    finally:
        _request.reset(token)
        if scope.fd is not None:
            os.close(scope.fd)
