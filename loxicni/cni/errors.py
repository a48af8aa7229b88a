"""CNI errors: one exception type carrying the spec's error code.

Every failure the plugin reports becomes a ``CniError``; the protocol layer prints it as
``{"cniVersion", "code", "msg", "details"}`` on stdout and exits non-zero.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """Error codes: 1-99 from the CNI spec, 100+ our own (documented in the README)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    # Plugin-specific codes.
    KERNEL_UNSUPPORTED = 100  # the running kernel lacks a feature the config asks for
    INTERFACE_EXISTS = 101  # CNI_IFNAME already exists in the sandbox
    ADDRESS_UNAVAILABLE = 102  # pool exhausted, requested IP taken, duplicate allocation
    KERNEL_ERROR = 103  # a netlink / nftables operation failed
    IPAM_FAILURE = 104  # a delegated IPAM plugin failed without a CNI error of its own
    CHECK_FAILED = 105  # CHECK found the state differs from prevResult
    INTERNAL = 999  # a bug: an exception nobody anticipated


class CniError(Exception):
    """A failure to report to the runtime with a CNI error code."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, object]:
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CniError({self.code}, {self.msg!r}, {self.details!r})"
