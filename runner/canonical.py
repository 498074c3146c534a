"""Canonical JSON: the one byte encoding that Sandrun hashes and signs.

Sorted keys, no insignificant whitespace, UTF-8 (not ``\\u`` escapes), and no floats at all: a
float's text differs between languages, so a hash over it could not be recomputed elsewhere.
Plans and audit records go through :func:`canonical_json` and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "sha256_hex", "reject_floats"]


_PLAIN = (str, int, bool, type(None))


def _has_float(value: Any) -> bool:
    """Iterative and by exact type first: this runs on every audit record."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _PLAIN:
            continue
        if kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif isinstance(item, float):
            return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def reject_floats(value: Any) -> None:
    """Raise ``TypeError`` naming the first float inside ``value``.

    The common case (no float) is a plain walk; paths are only built once a float was found,
    since every audit record goes through here.
    """
    if _has_float(value):
        _name_float(value, "")


def _name_float(value: Any, path: str) -> None:
    if isinstance(value, float):
        raise TypeError(f"floats are not allowed in canonical JSON (at {path or '/'})")
    if isinstance(value, dict):
        for key, item in value.items():
            _name_float(item, f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _name_float(item, f"{path}/{index}")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically; raises ``TypeError`` on floats or non-JSON types."""
    reject_floats(value)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
