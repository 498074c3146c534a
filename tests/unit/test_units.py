"""Sizes and durations: exact, strict, and the schema patterns agree with the parsers."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.units import (
    DURATION_PATTERN,
    DURATION_UNITS,
    MAX_DURATION_MS,
    MAX_SIZE,
    SIZE_PATTERN,
    SIZE_UNITS,
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MiB", 64 << 20),
        ("512 KiB", 512 << 10),
        ("1.5KiB", 1536),
        ("0.5KiB", 512),
        ("1024", 1024),
        ("1024B", 1024),
        ("1 B", 1),
        ("1KB", 1000),
        ("1.5GB", 1_500_000_000),
        ("2GiB", 2 << 30),
        ("1TiB", MAX_SIZE),
        ("1TB", 10**12),
        (67108864, 67108864),
        (1, 1),
        (MAX_SIZE, MAX_SIZE),
    ],
)
def test_sizes_parse_exactly(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        MAX_SIZE + 1,
        2**63,
        pytest.param(10**5000, id="huge"),  # too long for int-to-text: a UnitError, not a ValueError
        True,
        False,
        1.0,
        1536.0,
        math.nan,
        math.inf,
        None,
        [],
        {},
        b"1KiB",
        "",
        "0",
        "0KiB",
        "0.0MiB",
        " 1KiB",
        "1KiB ",
        "1KiB\n",
        "\n1KiB",
        "1\tKiB",
        "1\u00a0KiB",
        "1  KiB",
        "mib",
        "64mib",
        "64 mib",
        "64M",
        "64 MiBs",
        "64Mb",
        "-1KiB",
        "+1KiB",
        "1e3",
        "1e3B",
        "1E3KiB",
        "0777",
        "00",
        "1.5",
        "0.5B",
        "1.0000001KiB",
        "1.KiB",
        ".5KiB",
        "2TiB",
        "1.5TiB",
        "1_000",
        "1,000",
        "0x10",
        "\uff11\uff12KiB",  # full-width digits
        "\u0661KiB",  # Arabic-Indic digit one
        "9" * 70,
        "1KiB1",
        "NaN",
        "inf",
    ],
)
def test_bad_sizes_are_refused(value: object) -> None:
    with pytest.raises(UnitError):
        parse_size(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", 500),
        ("1s", 1000),
        ("1.5s", 1500),
        ("0.5s", 500),
        ("1.001s", 1001),
        ("10m", 600_000),
        ("1.5m", 90_000),
        ("1h", 3_600_000),
        ("168h", MAX_DURATION_MS),
    ],
)
def test_durations_parse_exactly(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "value",
    [
        30,
        30.0,
        1.5,
        0,
        True,
        None,
        ["30s"],
        math.nan,
        "",
        "30",
        "30 s",
        "30S",
        "30Ms",
        "30sec",
        "30min",
        "7d",
        "1e3s",
        "1e3ms",
        "0s",
        "0ms",
        "0.5ms",
        "1.0005s",
        "169h",
        "168.001h",
        "-1s",
        "30s\n",
        " 30s",
        "030s",
        "s",
        "1.s",
    ],
)
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(UnitError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "suggestion"), [("64mib", "MiB"), ("64 kib", "KiB"), ("64M", "MiB"), ("8gb", "GB")]
)
def test_a_wrongly_cased_size_unit_gets_a_suggestion(text: str, suggestion: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_size(text)
    assert f"did you mean {suggestion!r}" in str(caught.value)


@pytest.mark.parametrize(("text", "suggestion"), [("30S", "s"), ("30MS", "ms"), ("2H", "h"), ("5min", "m")])
def test_a_wrong_duration_unit_gets_a_suggestion(text: str, suggestion: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_duration(text)
    assert f"did you mean {suggestion!r}" in str(caught.value)


def test_a_bare_number_duration_says_it_is_ambiguous() -> None:
    with pytest.raises(UnitError) as caught:
        parse_duration(30)
    assert "ambiguous" in str(caught.value)


@pytest.mark.parametrize(
    ("amount", "text"),
    [(67108864, "64MiB"), (1536, "1.5KiB"), (1000, "1000B"), (1, "1B"), (0, "0B"), (MAX_SIZE, "1TiB")],
)
def test_format_size(amount: int, text: str) -> None:
    assert format_size(amount) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [(30_000, "30s"), (500, "500ms"), (1500, "1.5s"), (90_000, "1.5m"), (61_000, "61s"), (7_200_000, "2h")],
)
def test_format_duration(amount: int, text: str) -> None:
    assert format_duration(amount) == text


@pytest.mark.parametrize("bad", [-1, True, 1.5, "1"])
def test_format_refuses_what_is_not_a_count(bad: object) -> None:
    with pytest.raises(UnitError):
        format_size(bad)  # type: ignore[arg-type]
    with pytest.raises(UnitError):
        format_duration(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", [SIZE_PATTERN, DURATION_PATTERN])
def test_patterns_are_anchored_and_portable_to_ecma_262(pattern: str) -> None:
    assert pattern.startswith("^") and pattern.endswith(r"(?![\s\S])")
    for python_only in ("(?P", r"\A", r"\Z", "$", "(?i", "(?#"):
        assert python_only not in pattern
    assert re.search(pattern, "64" + ("MiB" if pattern == SIZE_PATTERN else "s"))
    assert not re.search(pattern, "64" + ("MiB" if pattern == SIZE_PATTERN else "s") + "\n")


# --- properties -------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=MAX_SIZE))
def test_size_round_trips_through_format(amount: int) -> None:
    assert parse_size(format_size(amount)) == amount


@given(st.integers(min_value=1, max_value=MAX_DURATION_MS))
def test_duration_round_trips_through_format(amount: int) -> None:
    assert parse_duration(format_duration(amount)) == amount


_ANYTHING = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.eE+- \tKMGTBibkmsh\n"),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@given(_ANYTHING)
def test_parsers_raise_nothing_but_unit_error(value: object) -> None:
    for parse in (parse_size, parse_duration):
        try:
            result = parse(value)
        except UnitError:
            continue
        assert isinstance(result, int) and not isinstance(result, bool) and result > 0


_QUANTITY_TEXT = st.builds(
    lambda number, space, unit: f"{number}{space}{unit}",
    st.from_regex(r"[0-9]{1,6}(\.[0-9]{1,4})?", fullmatch=True),
    st.sampled_from(["", " ", "  "]),
    st.sampled_from([*SIZE_UNITS, *DURATION_UNITS, "", "kib", "Ms", "d"]),
)


def _exact_value(text: str, units: dict[str, int], bare: str | None) -> Fraction | None:
    match = re.fullmatch(r"([0-9.]+) ?([A-Za-z]*)", text)
    assert match is not None
    unit = match[2] or bare
    return None if unit not in units else Fraction(match[1]) * units[unit]


@given(_QUANTITY_TEXT)
def test_size_pattern_and_parser_agree(text: str) -> None:
    """The schema pattern accepts everything the parser does; the parser refuses only for a reason."""
    try:
        amount = parse_size(text)
    except UnitError:
        if re.search(SIZE_PATTERN, text):
            exact = _exact_value(text, dict(SIZE_UNITS), "B")
            assert exact is not None
            assert exact == 0 or exact > MAX_SIZE or exact.denominator != 1
        return
    assert re.search(SIZE_PATTERN, text)
    assert amount == _exact_value(text, dict(SIZE_UNITS), "B")


@given(_QUANTITY_TEXT)
def test_duration_pattern_and_parser_agree(text: str) -> None:
    try:
        amount = parse_duration(text)
    except UnitError:
        if re.search(DURATION_PATTERN, text):
            exact = _exact_value(text, dict(DURATION_UNITS), None)
            assert exact is not None
            assert exact == 0 or exact > MAX_DURATION_MS or exact.denominator != 1
        return
    assert re.search(DURATION_PATTERN, text)
    assert amount == _exact_value(text, dict(DURATION_UNITS), None)


@given(st.integers(min_value=1, max_value=1024))
def test_bigger_units_are_bigger(n: int) -> None:
    assert parse_size(f"{n}B") < parse_size(f"{n}KiB") < parse_size(f"{n}MiB") < parse_size(f"{n}GiB")
    assert parse_size(f"{n}KB") < parse_size(f"{n}KiB")
    assert parse_duration(f"{n}ms") < parse_duration(f"{n}s") < parse_duration(f"{n}m")


@given(st.integers(min_value=1, max_value=1 << 20))
def test_equivalent_spellings_are_equal(n: int) -> None:
    assert parse_size(f"{n * 1024}B") == parse_size(f"{n * 1024}") == parse_size(f"{n}KiB")
    assert parse_size(f"{n} KiB") == parse_size(f"{n}KiB")
    assert parse_size(f"{n}KB") == n * 1000
    assert parse_size(str(n)) == parse_size(n)
    if n <= 10_000:  # durations stop at 7 days
        assert parse_duration(f"{n * 1000}ms") == parse_duration(f"{n}s")
        assert parse_duration(f"{n * 60}s") == parse_duration(f"{n}m")
        assert parse_duration(f"{n}.5s") == n * 1000 + 500
