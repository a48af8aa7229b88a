"""Errors of the net layer's overlay (cross-node routes and vxlan), its own and no CNI one:
the agent turns them into logs, status and retries."""

from __future__ import annotations


class OverlayError(Exception):
    """The overlay cannot be set up as asked: a device name taken by a link that is not ours,
    no address or interface for the node IP, a refused device."""
