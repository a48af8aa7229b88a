"""Running the ``nft`` command: the one way loxi-cni talks to nftables.

Why the CLI and not a binding: see ``loxicni.net.masq``. ``nft -f -`` runs a whole script as
one kernel transaction (all of it applies, or none), and ``nft -j`` lists in JSON.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess  # imported where nft runs: ~3 ms with shutil, at every start otherwise

NFT_TIMEOUT = 30.0  # seconds; nft normally takes a few ms, so this only bounds a wedged kernel
# Where to look for nft when the runtime gives plugins a minimal PATH.
SBIN_DIRS = "/usr/sbin:/sbin:/usr/local/sbin"
NO_SUCH = "No such file or directory"  # what nft says of a table, chain or set that is absent


class NftError(Exception):
    """nft failed, could not run, or said something we cannot read."""

    def __init__(self, what: str, details: str = "") -> None:
        super().__init__(f"{what}: {details}" if details else what)
        self.what = what
        self.details = details


def nft_command() -> list[str]:
    """The nft of the self-contained tree we run from (the image, or the tree the DaemonSet
    installs on the host: the nft it was built and tested with), else the host's."""
    from loxicni.base import bundle  # only where nft runs

    tree = bundle.running()
    if tree is not None:
        return tree.command(tree.nft)
    import shutil

    found = shutil.which("nft") or shutil.which("nft", path=SBIN_DIRS)
    if found is None:
        raise NftError(
            "nftables' nft command (package nftables) was not found",
            f"searched PATH={os.environ.get('PATH', '')!r} and {SBIN_DIRS}",
        )
    return [found]


def run(
    args: Sequence[str], stdin: str | None, what: str, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """``nft args`` (after ``prefix``, e.g. ``ip netns exec NAME``); NftError if it cannot run."""
    import subprocess

    cmd = [*prefix, *nft_command(), *args]
    try:
        return subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise NftError(f"{what}: nft timed out", " ".join(cmd)) from e
    except OSError as e:
        raise NftError(f"{what}: cannot run nft", str(e)) from e


def element_text(value: object) -> str:
    """An element's key from ``nft -j`` output back in nft syntax (address, prefix, range,
    concat), as a script names it."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{element_text(low)}-{element_text(high)}"
        if "concat" in value:
            return " . ".join(element_text(v) for v in value["concat"])
    raise ValueError(f"unexpected element value {value!r}")


def failed(what: str, proc: subprocess.CompletedProcess[str]) -> NftError:
    return NftError(what, proc.stderr.strip() or f"exit {proc.returncode}")


def run_checked(
    args: Sequence[str], stdin: str | None, what: str, prefix: Sequence[str] = ()
) -> str:
    """``nft args``; its output, or NftError carrying nft's complaint."""
    proc = run(args, stdin, what, prefix)
    if proc.returncode != 0:
        raise failed(what, proc)
    return proc.stdout
