"""CNI errors: one exception type carrying the spec's error code.

Every failure the plugin reports becomes a ``CniError``; the protocol layer prints it as
``{"cniVersion", "code", "msg", "details"}`` on stdout and exits non-zero.
"""

from __future__ import annotations

from typing import Final


class Code:
    """Error codes: 1-99 from the CNI spec, 100+ our own (documented in the README). Plain ints
    rather than an IntEnum: ``enum`` costs ~2 ms of every plugin start, and the codes are only
    ever compared and printed as numbers."""

    INCOMPATIBLE_VERSION: Final = 1
    UNSUPPORTED_FIELD: Final = 2
    UNKNOWN_CONTAINER: Final = 3
    INVALID_ENV: Final = 4
    IO_FAILURE: Final = 5
    DECODE_FAILURE: Final = 6
    INVALID_CONFIG: Final = 7
    TRY_AGAIN_LATER: Final = 11
    NOT_AVAILABLE: Final = 50
    LIMITED_CONNECTIVITY: Final = 51
    # Plugin-specific codes.
    KERNEL_UNSUPPORTED: Final = 100  # the running kernel lacks a feature the config asks for
    INTERFACE_EXISTS: Final = 101  # CNI_IFNAME already exists in the sandbox
    ADDRESS_UNAVAILABLE: Final = 102  # pool exhausted, requested IP taken, duplicate allocation
    KERNEL_ERROR: Final = 103  # a netlink / nftables operation failed
    IPAM_FAILURE: Final = 104  # a delegated IPAM plugin failed without a CNI error of its own
    CHECK_FAILED: Final = 105  # CHECK found the state differs from prevResult
    INTERNAL: Final = 999  # a bug: an exception nobody anticipated


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
