"""Canonical JSON: the one byte encoding that Sandrun hashes and signs.

Sorted keys, no insignificant whitespace, UTF-8 (not ``\\u`` escapes), and no floats at all: a
float's text differs between languages, so a hash over it could not be recomputed elsewhere.
Plans and audit records go through :func:`canonical_json` and nothing else.

The bytes are defined by the standard library's encoder,
``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``.
orjson produces the same bytes about six times faster, which matters because every job writes
two audit records; it encodes only values made of plain ``dict``/``list``/``tuple``/``str``/
``int``/``bool``/``None`` (checked by the walk that also refuses floats), and anything it refuses
(an integer beyond 64 bits, a key that is not a string, nesting deeper than 254, a ``str``
subclass) goes to the standard library, so the result never depends on which encoder ran.
``tests/unit/test_canonical.py`` holds the two equal on generated values.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import orjson

__all__ = ["canonical_json", "canonical_digest", "sha256_hex"]


_ANY_CASE_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
_SCALARS = frozenset({str, int, bool, type(None)})
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _plain(value: Any) -> bool | None:
    """True when ``value`` holds only the exact JSON types; None when it holds a float somewhere.

    This runs on every audit record, so a container's members are checked by exact type in C
    (``set(map(type, ...))``) and only its nested containers and odd members are visited one by one.
    """
    plain = True
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            members = item.values()
        elif kind is list or kind is tuple:
            members = item
        elif kind in _SCALARS:
            continue
        elif isinstance(item, float):
            return None
        else:
            plain = False  # a subclass or a type JSON lacks: the standard library decides
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            continue
        if not _SCALARS.issuperset(map(type, members)):
            stack.extend(member for member in members if type(member) not in _SCALARS)
    return plain


def _name_float(value: Any, path: str) -> None:
    """Raise ``TypeError`` naming the first float: paths are only built once :func:`_plain` found one."""
    if isinstance(value, float):
        raise TypeError(f"floats are not allowed in canonical JSON (at {path or '/'})")
    if isinstance(value, dict):
        for key, item in value.items():
            _name_float(item, f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _name_float(item, f"{path}/{index}")


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not plain JSON")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically; raises ``TypeError`` on floats or non-JSON types."""
    plain = _plain(value)
    if plain is None:
        _name_float(value, "")
    if plain:
        try:
            return orjson.dumps(value, default=_refuse, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:
            pass  # a big integer, a non-string key, deep nesting, bad UTF-8: the reference decides
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_digest(text: str) -> str | None:
    """A SHA-256 a person wrote (64 hex digits, either case) in its one form: lower case.

    None when ``text`` is not 64 hex digits. Every digest read from a manifest, a policy or the
    command line goes through here before it is compared with anything, so ``ABC…`` and ``abc…``
    are the same digest everywhere; digests Sandrun writes itself (plans, audit records) are lower
    case already and are refused otherwise.
    """
    return text.lower() if _ANY_CASE_HEX64.fullmatch(text) else None
