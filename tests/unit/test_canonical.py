"""Canonical JSON: the bytes every plan and audit record is hashed as."""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.canonical import canonical_json
from runner.plan import Limits


@pytest.mark.parametrize("value", [1.5, {"a": [1, {"b": 2.0}]}, (1, 2, 0.1), {"n": float("nan")}])
def test_canonical_json_refuses_floats_anywhere(value: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": [True, None], "a": "é"}) == '{"a":"é","b":[true,null]}'.encode()


def _reference(value: object) -> bytes:
    """The definition in docs/audit.md: the standard library's encoder."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_keys = st.text(max_size=8)  # every code point, control characters and surrogates included
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500)
@given(_json)
def test_canonical_json_equals_the_standard_library_encoding(value: object) -> None:
    # orjson is the fast path; the hashed bytes must be exactly the documented reference's
    try:
        expected: bytes | type[BaseException] = _reference(value)
    except UnicodeEncodeError:  # a lone surrogate is not UTF-8: refused either way
        expected = UnicodeEncodeError
    if expected is UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"big": 2**64, "neg": -(2**63) - 1},  # past orjson's 64-bit integers
        {"text": '\x00\x1f\x7f\u2028\u2029"\\/\ud7ff\ue000\U0010ffff'},  # escapes, separators
        {"b": 1, "a": {"d": [3, (4, 5)], "c": ""}, "": None},  # tuples are arrays; the empty key
        functools.reduce(lambda inner, _: [inner], range(300), []),  # deeper than orjson goes
        {"z": True, "é": False, "Z": 0, "\U0001f600": 1, "\uffff": 2},  # code point order
    ],
)
def test_canonical_json_edge_cases_match_the_reference(value: object) -> None:
    assert canonical_json(value) == _reference(value)


class _Text(str):
    pass


def test_str_subclasses_encode_as_their_text() -> None:
    assert canonical_json({"a": _Text("x"), _Text("k"): 1}) == b'{"a":"x","k":1}'


@pytest.mark.parametrize(
    "value",
    [
        {"when": dt.date(2026, 11, 21)},
        [uuid.UUID(int=0)],
        {"job": Limits(fuel=None, memory=1 << 20, timeout_ms=1000, stack=1 << 20, output=1024)},
        {1: 2, "a": 3},
    ],
)
def test_values_outside_json_are_refused_as_the_reference_refuses_them(value: object) -> None:
    # orjson would encode dates, UUIDs and dataclasses; canonical JSON does not
    with pytest.raises(TypeError):
        _reference(value)
    with pytest.raises(TypeError):
        canonical_json(value)
