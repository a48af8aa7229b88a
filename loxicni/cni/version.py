"""CNI spec versions this plugin speaks, and how to compare them.

Version strings are compared numerically, never lexically ("0.10.0" > "0.4.0"). Like the
reference library's parser, a short form such as "1.1" means "1.1.0".
"""

from __future__ import annotations

import re

from loxicni.cni.errors import CniError, Code

SUPPORTED_VERSIONS: tuple[str, ...] = (
    "0.1.0",
    "0.2.0",
    "0.3.0",
    "0.3.1",
    "0.4.0",
    "1.0.0",
    "1.1.0",
)
LATEST = "1.1.0"

# ASCII digits only: int() alone would also accept "+1", " 1", "1_0" and non-ASCII digits.
_VERSION_RE = re.compile(r"[0-9]+(?:\.[0-9]+){0,2}")


def parse(v: str) -> tuple[int, int, int]:
    """Split "MAJOR[.MINOR[.PATCH]]" into integers; anything else is CNI error 1."""
    if not isinstance(v, str) or not _VERSION_RE.fullmatch(v):
        raise CniError(Code.INCOMPATIBLE_VERSION, f"invalid CNI version {v!r}")
    parts = [int(p) for p in v.split(".")]
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def at_least(v: str, minimum: str) -> bool:
    """True if version ``v`` is ``minimum`` or newer."""
    return parse(v) >= parse(minimum)


def is_at_least(v: object, minimum: str) -> bool:
    """Like ``at_least``, but anything that is not a version string counts as older."""
    try:
        return isinstance(v, str) and parse(v) >= parse(minimum)
    except CniError:
        return False
