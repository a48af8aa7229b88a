"""Where loxi-cni keeps its state, and the environment that moves it.

Every path the plugin, the agent and the admin commands use is derived here, so a test (or a
second agent in another network namespace) moves all of them with two variables:

- ``LOXI_CNI_STATE_DIR`` (default ``/var/lib/loxi-cni``): what must survive a reboot's worth of
  agent restarts: attachment records.
- ``LOXI_CNI_RUN_DIR`` (default ``/run/loxi-cni``): what a reboot must forget: per-attachment
  locks, the nftables lock, and the agent's socket.
- ``LOXI_CNI_SOCKET`` overrides the socket alone (default ``<run dir>/agent.sock``).
- ``LOXI_CNI_LOG_DIR`` (default ``/var/log/loxi-cni``): the only directory where the agent
  writes a network config's ``logFile``.

Standard library only: the thin client imports this on every call.
"""

from __future__ import annotations

import os

DEFAULT_STATE_DIR = "/var/lib/loxi-cni"
DEFAULT_RUN_DIR = "/run/loxi-cni"
DEFAULT_LOG_DIR = "/var/log/loxi-cni"
SOCKET_NAME = "agent.sock"


def state_dir() -> str:
    return os.environ.get("LOXI_CNI_STATE_DIR") or DEFAULT_STATE_DIR


def run_dir() -> str:
    return os.environ.get("LOXI_CNI_RUN_DIR") or DEFAULT_RUN_DIR


def socket_path() -> str:
    return os.environ.get("LOXI_CNI_SOCKET") or os.path.join(run_dir(), SOCKET_NAME)


def records_dir() -> str:
    return os.path.join(state_dir(), "attachments")


def locks_dir() -> str:
    return os.path.join(run_dir(), "locks")


def nft_lock() -> str:
    return os.path.join(run_dir(), "nft.lock")


def log_dir() -> str:
    return os.environ.get("LOXI_CNI_LOG_DIR") or DEFAULT_LOG_DIR


def overlay_record() -> str:
    return os.path.join(state_dir(), "overlay.json")
