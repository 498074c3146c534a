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


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_float(item) for item in value)
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
