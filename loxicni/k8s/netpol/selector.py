"""Kubernetes label selectors (``matchLabels`` + ``matchExpressions``), as values.

A selector is frozen and hashable, and two selectors that select the same way compare equal
(``{"matchLabels": {"a": "1"}}`` and the matching ``In`` expression are kept apart, which only
costs a duplicate set): the compiler uses them as keys to share one address set among every
policy that uses the same selector.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})


class BadSelector(ValueError):
    """A selector the API server should have refused (unknown operator, missing values)."""


@dataclass(frozen=True)
class Selector:
    labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, obj: Mapping[str, Any] | None) -> Selector:
        """From the API's ``{"matchLabels": ..., "matchExpressions": [...]}``; ``{}`` and
        None select everything (callers that treat a missing selector differently check for
        None themselves)."""
        if not obj:
            return cls()
        labels = tuple(sorted((str(k), str(v)) for k, v in (obj.get("matchLabels") or {}).items()))
        exprs = []
        for e in obj.get("matchExpressions") or ():
            op = e.get("operator")
            if op not in OPERATORS:
                raise BadSelector(f"unknown selector operator {op!r}")
            values = tuple(sorted(str(v) for v in e.get("values") or ()))
            if op in ("In", "NotIn") and not values:
                raise BadSelector(f"operator {op} needs values")
            if op in ("Exists", "DoesNotExist") and values:
                raise BadSelector(f"operator {op} takes no values")
            exprs.append((str(e.get("key", "")), str(op), values))
        return cls(labels, tuple(sorted(set(exprs))))

    @property
    def everything(self) -> bool:
        return not self.labels and not self.expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.labels:
            if labels.get(key) != value:
                return False
        for key, op, values in self.expressions:
            present = key in labels
            if op == "In":
                if not present or labels[key] not in values:
                    return False
            elif op == "NotIn":
                if present and labels[key] in values:
                    return False
            elif op == "Exists":
                if not present:
                    return False
            elif present:  # DoesNotExist
                return False
        return True

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.labels]
        for key, op, values in self.expressions:
            if op == "In":
                parts.append(f"{key} in ({','.join(values)})")
            elif op == "NotIn":
                parts.append(f"{key} notin ({','.join(values)})")
            elif op == "Exists":
                parts.append(key)
            else:
                parts.append(f"!{key}")
        return ",".join(parts) or "<all>"
