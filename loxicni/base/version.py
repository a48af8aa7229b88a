"""The installed package's version, for ``loxi-cni version`` and the agent's status."""

from __future__ import annotations


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loxi-cni")
    except PackageNotFoundError:
        return "unknown"
