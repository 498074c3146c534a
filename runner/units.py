"""Sizes and durations as people write them in manifests: ``64MiB``, ``512 KiB``, ``30s``, ``1.5m``.

Parsing is strict on purpose: a limit that is silently misread (``64mib`` taken as bits, ``30``
taken as seconds when milliseconds were meant, ``1e3s`` half-parsed) is a sandbox that is looser
or tighter than its author believes. So every value is either exact or refused with a reason:

* sizes are bytes: a positive ``int``, or a string ``<number>[ ]<unit>`` with an optional single
  space and a binary (``KiB MiB GiB TiB``) or decimal (``KB MB GB TB``) unit, or ``B``/no unit
  for bytes; at most :data:`MAX_SIZE` (1 TiB);
* durations are milliseconds: a string ``<number><unit>`` with unit ``ms s m h`` and no space; a
  bare number is refused because nobody can tell whether ``30`` meant seconds or milliseconds;
  at most :data:`MAX_DURATION_MS` (7 days);
* a fraction is allowed when the result is whole (``1.5KiB`` is 1536 bytes, ``0.5ms`` is refused);
* zero, negatives, booleans, floats, NaN, exponents, leading zeros, surrounding whitespace and
  wrongly cased units (``mib``) are refused, the last with a "did you mean" hint.

:data:`SIZE_PATTERN` and :data:`DURATION_PATTERN` describe the same shapes for the JSON Schemas
(ECMA-262 and Python ``re`` alike); the parsers have the final word (zero, range, wholeness).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "UnitError",
    "MAX_SIZE",
    "MAX_DURATION_MS",
    "SIZE_UNITS",
    "DURATION_UNITS",
    "SIZE_PATTERN",
    "DURATION_PATTERN",
    "parse_size",
    "parse_duration",
    "format_size",
    "format_duration",
]

#: The largest size accepted: far above any sane memory, stack or output limit, far below overflow.
MAX_SIZE = 1 << 40
#: The longest duration accepted (7 days): a CI job that needs more is a mistake.
MAX_DURATION_MS = 7 * 24 * 3600 * 1000

#: Size units and their factor in bytes.
SIZE_UNITS: Mapping[str, int] = {
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
#: Duration units and their factor in milliseconds.
DURATION_UNITS: Mapping[str, int] = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}

# ``(?![\s\S])`` is "end of input" in both ECMA-262 and Python; ``$`` would accept a trailing "\n".
_NUMBER = r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?"
_END = r"(?![\s\S])"
SIZE_PATTERN = rf"^{_NUMBER}(?: ?(?:{'|'.join(SIZE_UNITS)}))?{_END}"
DURATION_PATTERN = rf"^{_NUMBER}(?:{'|'.join(DURATION_UNITS)}){_END}"

# Deliberately looser than the patterns, to say *what* is wrong rather than just "invalid".
_LOOSE = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?(?P<space> ?)(?P<unit>[A-Za-z]*)", re.ASCII)
_EXPONENT = re.compile(r"[0-9.]+[eE][+-]?[0-9]+[A-Za-z]*", re.ASCII)
_MAX_TEXT = 64  # longer input is refused before any arithmetic: no huge-integer conversions


class UnitError(ValueError):
    """A size or duration that cannot be used; the message is the reason, written for people."""


@dataclass(frozen=True)
class _Kind:
    """What differs between sizes and durations; the grammar and the checks are shared."""

    what: str
    units: Mapping[str, int]
    base_name: str  # the base unit in words, for "not a whole number of ..."
    bare_unit: str | None  # the unit of a number written without one; None: a unit is required
    space_ok: bool
    maximum: int
    example: str
    display_units: Mapping[str, int]


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _unit_hint(unit: str, units: Mapping[str, int]) -> str:
    """``"; did you mean 'MiB'?"`` for near misses such as ``mib``, ``M``, ``secs``."""
    folded = unit.lower()
    candidates = [u for u in units if u.lower() in (folded, folded + "ib")]
    candidates += difflib.get_close_matches(unit, [u for u in units if u not in candidates], n=1, cutoff=0.5)
    if candidates:
        return f"; did you mean {candidates[0]!r}?"
    return f"; use one of {', '.join(units)}"


def _parse_text(text: str, kind: _Kind) -> int:
    """Parse ``<number>[ ]<unit>`` exactly into a count of the base unit."""
    what, example = kind.what, kind.example
    if not text:
        raise UnitError(f"empty {what}; write e.g. {example}")
    if text != text.strip():
        raise UnitError(f"{what} {text!r} has whitespace around it; write {text.strip()!r}")
    if len(text) > _MAX_TEXT:
        raise UnitError(f"{what} is too long ({len(text)} characters)")
    match = _LOOSE.fullmatch(text)
    if match is None:
        if text.startswith("-"):
            raise UnitError(f"{what} {text!r} is negative; it must be greater than zero")
        if _EXPONENT.fullmatch(text):
            raise UnitError(f"{what} {text!r} uses an exponent; write the number in full, e.g. {example}")
        raise UnitError(f"{text!r} is not a {what}; write a number and a unit, e.g. {example}")
    digits, fraction, space, unit = match["int"], match["frac"] or "", match["space"], match["unit"]
    if len(digits) > 1 and digits.startswith("0"):
        raise UnitError(f"{what} {text!r} has a leading zero; write {digits.lstrip('0') or '0'}{space}{unit}")
    if not unit:
        if kind.bare_unit is None:
            raise UnitError(f"{what} {text!r} has no unit; write e.g. {text}{example.lstrip('0123456789')}")
        unit = kind.bare_unit
    if unit not in kind.units:
        raise UnitError(f"unknown unit {unit!r} in {what} {text!r}{_unit_hint(unit, kind.units)}")
    if space and not kind.space_ok:
        raise UnitError(f"{what} {text!r} has a space before the unit; write {text.replace(' ', '')}")
    scale: int = 10 ** len(fraction)
    scaled: int = (int(digits) * scale + int(fraction or "0")) * kind.units[unit]
    if scaled % scale:
        raise UnitError(f"{what} {text!r} is not a whole number of {kind.base_name}")
    return scaled // scale


def _shown(value: object) -> str:
    """``repr`` that cannot fail: Python refuses to turn integers of over 4300 digits into text."""
    if isinstance(value, int) and value.bit_length() > 64:
        return "a huge integer"
    return repr(value)


def _parse(value: object, kind: _Kind) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UnitError(f"expected a {kind.what} such as {kind.example}, got {_kind_of(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UnitError(f"{kind.what} {value!r} is not a number")
    if isinstance(value, (int, float)) and kind.bare_unit is None:
        shown = _shown(value)
        raise UnitError(f"{kind.what} {shown} has no unit, so it is ambiguous; write e.g. {kind.example}")
    if isinstance(value, float):
        raise UnitError(f"{kind.what} {value!r} is a float; write whole {kind.base_name} or use a unit")
    amount = value if isinstance(value, int) else _parse_text(value, kind)
    if amount <= 0:
        raise UnitError(f"{kind.what} {_shown(value)} must be greater than zero")
    if amount > kind.maximum:
        maximum = _format(kind.maximum, kind)
        raise UnitError(f"{kind.what} {_shown(value)} is too large; the maximum is {maximum}")
    return amount


def _format(amount: int, kind: _Kind) -> str:
    """Render ``amount`` in the largest display unit that shows it exactly with at most 3 decimals."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise UnitError(f"cannot format {amount!r} as a {kind.what}: expected a non-negative integer")
    for unit, factor in sorted(kind.display_units.items(), key=lambda item: -item[1]):
        if amount >= factor and (amount * 1000) % factor == 0:
            whole, milli = divmod(amount * 1000 // factor, 1000)
            return f"{whole}.{milli:03d}".rstrip("0") + unit if milli else f"{whole}{unit}"
    return f"{amount}{min(kind.units, key=kind.units.__getitem__)}"


_SIZE = _Kind(
    what="size",
    units=SIZE_UNITS,
    base_name="bytes",
    bare_unit="B",
    space_ok=True,
    maximum=MAX_SIZE,
    example="64MiB",
    # Binary units only: decimal ones would make 1000-byte multiples look like round sizes.
    display_units={unit: factor for unit, factor in SIZE_UNITS.items() if factor & (factor - 1) == 0},
)
_DURATION = _Kind(
    what="duration",
    units=DURATION_UNITS,
    base_name="milliseconds",
    bare_unit=None,
    space_ok=False,
    maximum=MAX_DURATION_MS,
    example="30s",
    display_units=DURATION_UNITS,
)


def parse_size(value: object) -> int:
    """Bytes from a positive ``int`` or a size string such as ``64MiB``, ``512 KiB`` or ``1.5GB``."""
    return _parse(value, _SIZE)


def parse_duration(value: object) -> int:
    """Milliseconds from a duration string such as ``500ms``, ``1.5s`` or ``10m``."""
    return _parse(value, _DURATION)


def format_size(n: int) -> str:
    """``67108864 -> "64MiB"``, ``1536 -> "1.5KiB"``, ``1000 -> "1000B"``: exact, so it parses back."""
    return _format(n, _SIZE)


def format_duration(ms: int) -> str:
    """``30000 -> "30s"``, ``90000 -> "1.5m"``, ``61000 -> "61s"``: exact, so it parses back."""
    return _format(ms, _DURATION)
