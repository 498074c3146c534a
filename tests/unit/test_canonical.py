"""Canonical JSON: the bytes every plan and audit record is hashed as."""

from __future__ import annotations

import pytest

from runner.canonical import canonical_json


@pytest.mark.parametrize("value", [1.5, {"a": [1, {"b": 2.0}]}, (1, 2, 0.1), {"n": float("nan")}])
def test_canonical_json_refuses_floats_anywhere(value: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": [True, None], "a": "é"}) == '{"a":"é","b":[true,null]}'.encode()
