"""SHA-256 without OpenSSL: ``hashlib`` loads ``_hashlib`` (OpenSSL, ~2-4 ms at every plugin
start), while CPython's own ``_sha256`` (``_sha2`` from 3.12) loads in microseconds and gives
the same digests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _constructor() -> Callable[[bytes], Any]:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]

        return sha256  # type: ignore[no-any-return]
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found]

            return sha256  # type: ignore[no-any-return]
        except ImportError:
            from hashlib import sha256 as openssl_sha256

            return openssl_sha256


_sha256 = _constructor()


def sha256_hex(data: bytes) -> str:
    return str(_sha256(data).hexdigest())
