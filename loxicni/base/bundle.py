"""The self-contained tree (deploy/bundle.sh) this Python runs from, when it runs from one.

A tree carries its own loader, libraries, Python and ``nft``; its ``bundle.json`` says where
they are, relative to the tree. Its programs run through its own loader on its own libraries,
whatever the host (or a FROM-scratch image) has.

Standard library only: the plugin path may ask (ipMasq runs nft).
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "bundle.json"
EXECUTABLE = "loxi-cni"  # the tree's own copy of the executable a runtime execs


class NotATree(Exception):
    """The directory holds no readable bundle.json."""


@dataclass(frozen=True)
class Tree:
    root: Path
    version: str
    id: str  # the version and a digest of every byte of the tree
    loader: str  # paths relative to root
    python: str
    nft: str

    def command(self, program: str) -> list[str]:
        """argv that runs the tree's ``program`` (relative to root) on the tree's libraries."""
        return [
            str(self.root / self.loader),
            "--library-path",
            str(self.root / "lib"),
            str(self.root / program),
        ]


def read(root: Path) -> Tree:
    """The tree at ``root``; NotATree if it has no readable bundle.json."""
    try:
        doc = json.loads((root / MANIFEST).read_text())
        return Tree(
            root=root,
            version=str(doc["version"]),
            id=str(doc["id"]),
            loader=str(doc["loader"]),
            python=str(doc["python"]),
            nft=str(doc["nft"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotATree(f"{root}: no tree ({exc})") from exc


@functools.cache
def running() -> Tree | None:
    """The tree whose Python runs this process (it is <tree>/python/bin/pythonX.Y), or None."""
    try:
        return read(Path(sys.executable).parents[2])
    except (NotATree, IndexError):
        return None
