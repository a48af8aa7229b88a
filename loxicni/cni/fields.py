"""Typed reads of decoded JSON (network configs, results), each failure one ``CniError``.

One reader per document kind fixes the error code and how keys match: a network config is
``INVALID_CONFIG``; a result that does not decode is ``DECODE_FAILURE``; host-local's config
matches keys case-insensitively, the last match winning, because the reference decodes it with
Go's encoding/json and a migrated node must read ``"RangeStart"`` as ``rangeStart``.
Messages name the field by its JSON path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from loxicni.cni.errors import CniError


def kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


class Fields:
    def __init__(self, code: int, prefix: str = "", *, fold_case: bool = False) -> None:
        self.code = code
        self.prefix = prefix
        self.fold_case = fold_case

    def fail(self, path: str, what: str) -> NoReturn:
        raise CniError(self.code, f"{self.prefix}{path}: {what}")

    def get(self, obj: Mapping[str, Any] | None, key: str) -> Any:
        if obj is None:
            return None
        if not self.fold_case:
            return obj.get(key)
        folded = key.lower()
        value: Any = None
        for k, v in obj.items():
            if k == key or k.lower() == folded:
                value = v
        return value

    def as_object(self, value: Any, path: str, *, required: bool = False) -> Mapping[str, Any]:
        """An object; absent (null) is an empty one unless ``required``."""
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, "missing" if value is None else f"must be an object, not {kind(value)}")
        return value

    def as_list(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            self.fail(path, f"must be an array, not {kind(value)}")
        return list(value)

    def as_str(self, value: Any, path: str, *, required: bool = False, default: str = "") -> str:
        """A string; absent (null) and ``""`` read as ``default`` (Go's zero value)."""
        if value is None or value == "":
            if required:
                self.fail(path, "missing")
            return default
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {kind(value)}")
        return value

    def as_strs(self, value: Any, path: str) -> list[str]:
        items = self.as_list(value, path)
        for n, item in enumerate(items):
            if not isinstance(item, str):
                self.fail(f"{path}[{n}]", f"must be a string, not {kind(item)}")
        return items

    def as_bool(self, value: Any, path: str, default: bool = False) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, not {kind(value)}")
        return value

    def as_int(
        self, value: Any, path: str, *, low: int | None = None, high: int | None = None
    ) -> int | None:
        """An integer within ``low``..``high``; None when absent. A boolean is not a number."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, not {kind(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{'' if low is None else low}..{'' if high is None else high}"
            self.fail(path, f"{value} is outside {bounds}")
        return value
