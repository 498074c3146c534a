"""Strict YAML loading: every refusal with its rule id and line, YAML 1.2 scalars, the source map."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import runner.source
from runner.errors import InputError, Location
from runner.source import _INVISIBLE as _REFUSED
from runner.source import MAX_DEPTH, Document, load_yaml_bytes, load_yaml_file

HOSTILE = Path(__file__).resolve().parents[1] / "hostile" / "yaml"

MANIFEST = b"""\
apiVersion: sandrun/v1
kind: Manifest
metadata:
  name: docs-checks
tools:
  mdlint:
    module: ../tools/mdlint.wasm
    version: 1.4.0
    signature: {key: release-2026, sig: "c2ln"}
jobs:
  - name: lint-readme
    tool: mdlint
    args: [--strict, /src/README.md]
    invoke: null
    env: {LANG: C, NO_COLOR: "1", "a/b~c": x}
    fs:
      - {host: ./docs, guest: /src, mode: ro}
    limits:
      fuel: 2000000000
      memory: 64MiB
    note: |
      literal text
"""


@pytest.fixture(scope="module", autouse=True, params=["libyaml", "pure"])
def parser(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run every test with libyaml's parser and with PyYAML's pure one: both must behave the same."""
    if request.param == "libyaml" and not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml")
    source = yaml.CBaseLoader if request.param == "libyaml" else yaml.BaseLoader
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner.source, "_EventSource", source)
        yield request.param


def refusal(name: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_yaml_file(HOSTILE / name, display=name)
    return info.value


def where(error: InputError) -> tuple[str, int | None, str]:
    """The first violation's rule id, line and pointer (and the file must be the display name)."""
    location = error.location
    assert location is not None
    return error.rule_id, location.line, location.pointer


# --- every refusal, with its rule id and line -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule_id", "line", "pointer"),
    [
        ("duplicate-key-nested.yaml", "yaml.duplicate-key", 11, "/jobs/0/limits/fuel"),
        ("duplicate-key-top.yaml", "yaml.duplicate-key", 4, "/kind"),
        ("python-tag.yaml", "yaml.tag", 4, "/metadata/name"),
        ("str-tag.yaml", "yaml.tag", 3, "/metadata/version"),
        ("custom-tag.yaml", "yaml.tag", 2, "/env/TOKEN"),
        ("tag-directive.yaml", "yaml.tag", 1, ""),
        ("merge-key.yaml", "yaml.merge-key", 5, "/jobs/0/limits/<<"),
        ("int-key.yaml", "yaml.key-type", 3, "/env/1"),
        ("bool-key.yaml", "yaml.key-type", 3, "/network/true"),
        ("null-key.yaml", "yaml.key-type", 2, "/metadata/~0"),
        ("float-key.yaml", "yaml.key-type", 2, "/limits/1.5"),
        ("complex-key.yaml", "yaml.key-type", 2, ""),
        ("non-utf8.yaml", "yaml.encoding", 4, ""),
        ("nul-byte.yaml", "yaml.encoding", 2, ""),
        ("utf16-bom.yaml", "yaml.encoding", 1, ""),
        ("control-char.yaml", "yaml.encoding", 3, ""),
        ("empty.yaml", "yaml.empty", 1, ""),
        ("comments-only.yaml", "yaml.empty", 1, ""),
        ("document-marker-only.yaml", "yaml.empty", 1, ""),
        ("list-top-level.yaml", "yaml.not-mapping", 2, ""),
        ("scalar-top-level.yaml", "yaml.not-mapping", 1, ""),
        ("two-documents.yaml", "yaml.multiple-documents", 3, ""),
        ("syntax-error.yaml", "yaml.syntax", 5, ""),
        ("unclosed-flow.yaml", "yaml.syntax", 3, ""),
        ("alias-reuse.yaml", "yaml.alias", 3, "/jobs/0/limits"),
        ("billion-laughs.yaml", "yaml.alias", 2, "/a"),
        ("special-float.yaml", "yaml.special-float", 3, "/limits/timeout"),
        ("nan.yaml", "yaml.special-float", 2, "/governance/max_score"),
        ("float-overflow.yaml", "yaml.special-float", 2, "/governance/max_score"),
        ("huge-int.yaml", "yaml.number", 2, "/limits/fuel"),
        ("yaml11-directive.yaml", "yaml.directive", 1, ""),
        ("nel-in-comment.yaml", "yaml.invisible-char", 6, ""),
        ("line-separator.yaml", "yaml.invisible-char", 3, ""),
        ("paragraph-separator.yaml", "yaml.invisible-char", 4, ""),
        ("bidi-override.yaml", "yaml.invisible-char", 5, ""),
        ("bidi-isolate.yaml", "yaml.invisible-char", 5, ""),
    ],
)
def test_hostile_file_is_refused_at_its_line(name: str, rule_id: str, line: int, pointer: str) -> None:
    error = refusal(name)
    assert where(error) == (rule_id, line, pointer)
    assert error.location is not None and error.location.file == name
    assert error.location.column is not None


def test_duplicate_key_message_names_both_lines() -> None:
    error = refusal("duplicate-key-nested.yaml")
    assert error.location == Location("duplicate-key-nested.yaml", 11, 7, "/jobs/0/limits/fuel")
    assert "line 9" in error.violations[0].message


def test_too_deep_block_nesting_stops_at_the_limit() -> None:
    error = refusal("too-deep.yaml")
    rule_id, line, pointer = where(error)
    # line 1 is apiVersion, k0 is on line 2; the mapping under k{MAX_DEPTH - 1} is one level too deep
    assert (rule_id, line) == ("yaml.depth", MAX_DEPTH + 2)
    assert pointer.count("/") == MAX_DEPTH


def test_too_deep_flow_nesting_fails_fast() -> None:
    error = refusal("too-deep-flow.yaml")  # 100 000 nested brackets
    assert where(error)[:2] == ("yaml.depth", 1)
    # fast without a clock: refused within the first few thousand brackets, not after reading them all
    assert error.location is not None and error.location.column is not None
    assert error.location.column < 5_000


def test_nesting_at_the_limit_is_accepted() -> None:
    text = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    data = load_yaml_bytes(text.encode(), "deep.yaml").data
    assert "a" in data


def test_billion_laughs_fails_fast_without_memory_growth() -> None:
    tracemalloc.start()
    try:
        error = refusal("billion-laughs.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # fast without a clock: nothing was expanded (memory stays flat), one violation per anchor
    assert peak < 5 * 1024 * 1024
    assert {v.rule_id for v in error.violations} == {"yaml.alias"}
    # one violation per anchor name (a..i), not one per alias
    assert len(error.violations) == 9


def test_alias_is_reported_where_it_is_used() -> None:
    error = load_error(b"limits: {fuel: 1}\njobs:\n  - limits: *std\n")
    assert where(error) == ("yaml.alias", 3, "/jobs/0/limits")


def test_utf8_bom_is_accepted_and_hashed_as_read() -> None:
    raw = (HOSTILE / "utf8-bom.yaml").read_bytes()
    document = load_yaml_file(HOSTILE / "utf8-bom.yaml")
    assert document.data == {"kind": "Manifest", "metadata": {"name": "bom-ok"}}
    assert document.locate("/kind").line == 1 and document.locate("/kind").column == 7
    assert document.sha256 == hashlib.sha256(raw).hexdigest()


def test_non_utf8_column_counts_characters() -> None:
    error = load_error("a: é\nb: caf".encode() + b"\xe9\n")
    assert error.location == Location("x.yaml", 2, 7, "")


def test_encoding_column_does_not_count_the_utf8_bom() -> None:
    assert load_error(b"\xef\xbb\xbfab\x01: 1\n").location == Location("x.yaml", 1, 3, "")


def test_all_problems_of_a_file_are_reported_together() -> None:
    error = load_error(b"a: 1\na: 2\nb: !!str x\n1: y\n")
    assert [(v.rule_id, v.location.line if v.location else None) for v in error.violations] == [
        ("yaml.duplicate-key", 2),
        ("yaml.tag", 3),
        ("yaml.key-type", 4),
    ]


def test_violation_count_is_capped() -> None:
    text = "".join(f"k{i}: !!str v\n" for i in range(1000))
    error = load_error(text.encode())
    assert len(error.violations) <= 50


def test_syntax_error_after_other_problems_keeps_both() -> None:
    error = load_error(b"a: 1\na: 2\nb: [\n")
    assert [v.rule_id for v in error.violations] == ["yaml.duplicate-key", "yaml.syntax"]


# --- size and reading ------------------------------------------------------------------------------


def test_size_cap_is_checked_before_parsing() -> None:
    raw = b"a: [" * 1000  # would be a syntax error if it were parsed
    with pytest.raises(InputError) as info:
        load_yaml_bytes(raw, "big.yaml", max_bytes=len(raw) - 1)
    assert info.value.rule_id == "yaml.too-large"
    assert info.value.location == Location("big.yaml")
    assert load_yaml_bytes(b"a: 1\n", "ok.yaml", max_bytes=5).data == {"a": 1}


def test_size_cap_on_files_reads_a_bounded_amount(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: 1\n" * 300_000)  # 1.5 MB, over the default cap
    with pytest.raises(InputError) as info:
        load_yaml_file(big)
    assert info.value.rule_id == "yaml.too-large"
    assert info.value.location == Location(str(big))


def test_endless_file_is_refused_as_too_large() -> None:
    with pytest.raises(InputError) as info:
        load_yaml_file(Path("/dev/zero"), max_bytes=1024)
    assert info.value.rule_id == "yaml.too-large"


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.yaml" if kind == "missing" else tmp_path
    with pytest.raises(InputError) as info:
        load_yaml_file(path, display="shown.yaml")
    assert info.value.rule_id == "yaml.read"
    assert info.value.location == Location("shown.yaml")


# --- YAML 1.2 core schema scalars --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("no", "no"),
        ("yes", "yes"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("n", "n"),
        ("0777", 777),
        ("22:22", "22:22"),
        ("2027-06-30", "2027-06-30"),
        ("0x1F", 31),
        ("0o17", 15),
        ("0b101", "0b101"),
        ("1_000", "1_000"),
        ("-12", -12),
        ("+3", 3),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("-.5", -0.5),
        ("~", None),
        ("null", None),
        ("NULL", None),
        ("", None),
        ("true", True),
        ("True", True),
        ("FALSE", False),
        ("tRUE", "tRUE"),
        ("64MiB", "64MiB"),
        ("30s", "30s"),
        ("1.4.0", "1.4.0"),
        ("0x", "0x"),
        ("'no'", "no"),
        ('"0777"', "0777"),
        ("'~'", "~"),
        ('""', ""),
    ],
)
def test_yaml_12_core_scalars(written: str, value: object) -> None:
    data = load_yaml_bytes(f"v: {written}\n".encode(), "s.yaml").data
    assert data["v"] == value
    assert type(data["v"]) is type(value)


def test_quoted_keys_that_look_typed_are_strings() -> None:
    data = load_yaml_bytes(b'"1": a\n\'true\': b\n"<<": c\nno: d\n', "k.yaml").data
    assert data == {"1": "a", "true": "b", "<<": "c", "no": "d"}


@pytest.mark.parametrize("written", [".inf", "-.inf", "+.Inf", ".NAN", ".NaN"])
def test_special_floats_are_refused(written: str) -> None:
    assert where(load_error(f"a: 1\nv: {written}\n".encode())) == ("yaml.special-float", 2, "/v")


# --- source map ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(parser: str) -> Document:
    return load_yaml_bytes(MANIFEST, "m.yaml")


def test_manifest_data_is_plain(manifest: Document) -> None:
    job = manifest.data["jobs"][0]
    assert job["limits"] == {"fuel": 2000000000, "memory": "64MiB"}
    assert job["invoke"] is None
    assert job["env"] == {"LANG": "C", "NO_COLOR": "1", "a/b~c": "x"}
    assert job["note"] == "literal text\n"
    assert manifest.data["tools"]["mdlint"]["version"] == "1.4.0"


@pytest.mark.parametrize(
    ("pointer", "line", "column"),
    [
        ("", 1, 1),
        ("/apiVersion", 1, 13),
        ("/metadata/name", 4, 9),
        ("/tools/mdlint/signature/sig", 9, 41),
        ("/jobs/0", 11, 5),
        ("/jobs/0/args/1", 13, 22),
        ("/jobs/0/env/a~1b~0c", 15, 44),
        ("/jobs/0/fs/0/mode", 17, 43),
        ("/jobs/0/limits/fuel", 19, 13),
        ("/jobs/0/invoke", 14, 13),
    ],
)
def test_locate(manifest: Document, pointer: str, line: int, column: int) -> None:
    assert manifest.locate(pointer) == Location("m.yaml", line, column, pointer)


def test_locate_missing_field_uses_nearest_ancestor(manifest: Document) -> None:
    assert manifest.locate("/jobs/0/limits/timeout") == Location("m.yaml", 19, 7, "/jobs/0/limits/timeout")
    assert manifest.locate("/jobs/7/name") == Location("m.yaml", 11, 3, "/jobs/7/name")
    assert manifest.locate("/nothing/here") == Location("m.yaml", 1, 1, "/nothing/here")


def test_locate_key(manifest: Document) -> None:
    assert manifest.locate_key("/jobs/0/limits/memory") == Location("m.yaml", 20, 7, "/jobs/0/limits/memory")
    assert manifest.locate_key("/jobs/0/env/NO_COLOR") == Location("m.yaml", 15, 20, "/jobs/0/env/NO_COLOR")
    # list items have no key: fall back to the value
    assert manifest.locate_key("/jobs/0") == manifest.locate("/jobs/0")


def test_is_plain_scalar(manifest: Document) -> None:
    assert manifest.is_plain_scalar("/tools/mdlint/version")
    assert manifest.is_plain_scalar("/jobs/0/limits/fuel")
    assert manifest.is_plain_scalar("/jobs/0/invoke")
    assert not manifest.is_plain_scalar("/jobs/0/env/NO_COLOR")  # "1"
    assert not manifest.is_plain_scalar("/tools/mdlint/signature/sig")  # quoted
    assert not manifest.is_plain_scalar("/jobs/0/note")  # block scalar
    assert not manifest.is_plain_scalar("/jobs/0/limits")  # a mapping
    assert not manifest.is_plain_scalar("/jobs/0/missing")


def test_document_built_without_source_map_still_locates() -> None:
    document = Document(path="p.yaml", data={"a": 1}, sha256="0" * 64)
    assert document.locate("/a") == Location("p.yaml", None, None, "/a")
    assert document.locate_key("/a") == Location("p.yaml", None, None, "/a")


# --- robustness ------------------------------------------------------------------------------------

YAMLISH = st.text(
    alphabet=st.sampled_from(list("ab1 :-[]{},&*!?|>'\"#~.\n\t%<@`\\") + ["\x00", "é"]), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(YAMLISH)
def test_any_input_loads_or_fails_as_input_error(text: str) -> None:
    try:
        document = load_yaml_bytes(text.encode(), "f.yaml")
    except InputError as error:
        for violation in error.violations:
            assert violation.rule_id.startswith("yaml.")
            assert violation.location is not None and violation.location.file == "f.yaml"
        return
    assert isinstance(document.data, dict)
    assert_plain(document.data)


def assert_plain(value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert value is None or type(value) in (str, int, float, bool)


def load_error(raw: bytes) -> InputError:
    with pytest.raises(InputError) as info:
        load_yaml_bytes(raw, "x.yaml")
    return info.value


# --- characters that make a file read differently than it parses ------------------------------------

LINE_BREAKS = "\x85\u2028\u2029"
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# characters that show nothing (each test puts them next to ASCII text, where joiners and VS1-VS16
# change nothing on screen either): soft hyphen, zero-width space, ZWNJ, ZWJ, word joiner, a BOM
# inside the text, a Hangul filler, VS16, a tag character ("ASCII smuggling"), VS17
HIDDEN = "\u00ad\u200b\u200c\u200d\u2060\ufeff\u3164\ufe0f\U000e0041\U000e0100"
INVISIBLE = LINE_BREAKS + BIDI + HIDDEN
# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt), all of which the loader
# refuses (the joiners and VS1-VS16 only next to ASCII): HIDDEN above samples it, this is all of it
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip


def refused_somewhere(char: str) -> bool:
    """Whether the loader refuses ``char`` anywhere, or next to some text."""
    return char in INVISIBLE or any(low <= ord(char) <= high for low, high in DEFAULT_IGNORABLE)


# refused only next to ASCII text: they shape non-ASCII text (ZWNJ, ZWJ) or emoji (VS1-VS16)
CONTEXTUAL = "\u200c\u200d" + "".join(map(chr, range(0xFE00, 0xFE10)))
POLICY = "apiVersion: sandrun/v1\nkind: Policy  # the kind\nmetadata: {name: p, description: 'plain text'}\n"


def invisible_at(text: str) -> tuple[int, int]:
    """(line, column) of the first refused character, counted as editors count: by \\n only."""
    index = next(i for i, c in enumerate(text) if c in INVISIBLE)
    before = text[:index]
    return before.count("\n") + 1, index - before.rfind("\n")


def test_nel_in_a_comment_is_refused_even_though_it_hides_a_second_key() -> None:
    raw = (HOSTILE / "nel-in-comment.yaml").read_bytes()
    error = refusal("nel-in-comment.yaml")
    assert error.rule_id == "yaml.invisible-char" and len(error.violations) == 1
    assert error.location == Location("nel-in-comment.yaml", *invisible_at(raw.decode()), "")
    assert "U+0085" in error.violations[0].message
    # without the rule, YAML reads the "comment" as a second memory field (what the check prevents)
    assert yaml.safe_load(raw.decode().replace("\x85", "\n"))["limits"]["max"]["memory"] == "64GiB"


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("where", ["comment", "value", "key", "quoted"])
def test_each_refused_character_anywhere(char: str, where: str) -> None:
    text = {
        "comment": POLICY.replace("# the kind", f"# the {char}kind"),
        "value": POLICY.replace("plain text", f"plain{char} text"),
        "key": POLICY.replace("description", f"descr{char}iption"),
        "quoted": POLICY.replace("{name: p,", f'{{name: "p{char}",'),
    }[where]
    with pytest.raises(InputError) as info:
        load_yaml_bytes(text.encode("utf-8"), "p.yaml")
    assert info.value.rule_id == "yaml.invisible-char"
    assert info.value.location == Location("p.yaml", *invisible_at(text), "")


def test_joiners_and_variation_selectors_inside_non_ascii_text_are_allowed() -> None:
    # the red heart (U+2764 VS16), a family emoji (ZWJ sequence), a Persian word with a ZWNJ
    text = POLICY.replace(
        "plain text", "I \u2764\ufe0f it \U0001f468\u200d\U0001f469 \u0645\u06cc\u200c\u0634\u0648\u062f"
    )
    document = load_yaml_bytes(text.encode("utf-8"), "p.yaml")
    assert "\u200d" in document.data["metadata"]["description"]


def test_every_occurrence_is_reported_and_the_escaped_form_is_allowed() -> None:
    text = POLICY + "x: a\u202eb  # \u2028\n"
    with pytest.raises(InputError) as info:
        load_yaml_bytes(text.encode("utf-8"), "p.yaml")
    assert [(v.rule_id, v.location.line) for v in info.value.violations if v.location] == [
        ("yaml.invisible-char", 4),
        ("yaml.invisible-char", 4),
    ]
    escaped = load_yaml_bytes((POLICY + 'x: "a\\u202eb"\n').encode("utf-8"), "p.yaml")
    assert escaped.data["x"] == "a\u202eb"  # visible in the file as an escape, so allowed


# text without any character the loader refuses on its own, so the inserted one is the first
_LINE = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)).filter(
        lambda c: c not in CONTEXTUAL and _REFUSED.match(c) is None
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_LINE, min_size=1, max_size=6), data=st.data())
def test_a_refused_character_is_found_wherever_it_is(lines: list[str], data: st.DataObject) -> None:
    """Arbitrary text with one refused character inserted: refused, at the place editors show."""
    text = "\n".join(lines)
    position = data.draw(st.integers(0, len(text)))
    char = data.draw(st.sampled_from([c for c in INVISIBLE if c not in CONTEXTUAL]))
    assume(position > 0 or char != "\ufeff")  # a leading U+FEFF is the byte order mark, dropped
    text = text[:position] + char + text[position:]
    try:
        load_yaml_bytes(text.encode("utf-8"), "f.yaml")
    except InputError as error:
        first = error.violations[0]
        if first.rule_id != "yaml.encoding":  # a NUL or C0 control in the drawn text comes first
            assert first.rule_id == "yaml.invisible-char"
            assert first.location == Location("f.yaml", *invisible_at(text), "")
    else:
        raise AssertionError("a file with a refused character loaded")


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs",)).filter(lambda c: not refused_somewhere(c))
    )
)
def test_files_without_them_never_get_that_rule(text: str) -> None:
    try:
        load_yaml_bytes(text.encode("utf-8"), "f.yaml")
    except InputError as error:
        assert all(v.rule_id != "yaml.invisible-char" for v in error.violations)
