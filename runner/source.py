"""Strict YAML loading with a source map: the only module that imports ``yaml``.

Manifests and policies are security decisions written by people, so the loader refuses every YAML
feature that makes a file mean something other than what it visibly says: duplicate keys (the last
one silently wins elsewhere), anchors and aliases (billion laughs; one value, two places), explicit
tags (``!!python/object``), merge keys, non-string keys, YAML 1.1 scalar guessing (``no`` is a
string here, never ``False``), multiple documents, absurd nesting, and characters that break lines
where editors do not, reorder text on screen or show nothing at all.

It reads the parser's *event* stream and builds plain Python values itself instead of using
PyYAML's composer and constructor: each check then sees the exact token (was it quoted? was there
an explicit tag?), aliases are never expanded, and the source map (JSON Pointer -> line/column) is
built in the same pass for almost nothing. Problems that do not stop parsing are collected, so one
run reports all of them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.errors import InputError, Location, Violation, escape_pointer_token

__all__ = ["MAX_DOCUMENT_BYTES", "MAX_DEPTH", "Document", "load_yaml_bytes", "load_yaml_file"]

MAX_DOCUMENT_BYTES = 1 << 20
"""Default size cap: far above any real manifest, far below what could hurt the runner."""

MAX_DEPTH = 64
"""Deepest collection nesting accepted; real manifests need about 6."""

#: A hex or octal integer larger than this has more decimal digits than Python prints (4300).
_MAX_INT_BITS = 14_000
_MAX_VIOLATIONS = 50  # stop collecting after this many: a hostile file must not cost more than that

# libyaml's event parser when PyYAML was built with it (about 20x faster); the pure one otherwise.
# Both yield the same events and marks; only ``style`` of a plain scalar differs ('' vs None).
_EventSource: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)

_UTF8_BOM = b"\xef\xbb\xbf"
_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)
# Characters YAML forbids in a stream (same set as PyYAML's reader), checked up front so the error
# names a line and column and is an encoding error, not a parser crash.
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# Characters that break a line for YAML but not for editors, diff or grep (NEL, LINE and PARAGRAPH
# SEPARATOR), or that reorder text on screen (bidirectional controls): with them a reviewer reads
# another file than the one that runs. Refused anywhere, comments included.
_LINE_BREAKS = "\x85\u2028\u2029"
_BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt) but for the bidi controls above,
# the joiners and the variation selectors VS1-VS16: characters that show nothing, so a value holding
# them differs from what a reviewer reads (zero-width space, soft hyphen, Hangul fillers, the tag
# characters of "ASCII smuggling" U+E0000-E007F and the supplementary variation selectors).
_IGNORABLE = (
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b\u2060-\u2065\u206a-\u206f"
    "\u3164\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
# The joiners (ZWNJ, ZWJ) shape Persian or Indic words and emoji sequences, and VS1-VS16 choose how
# the character before them is drawn (the red heart is U+2764 U+FE0F): those are refused only next
# to ASCII text, where they change nothing on screen.
_HIDDEN_NEXT_TO_ASCII = "(?<=[\x00-\x7f])[\u200c\u200d\ufe00-\ufe0f]|[\u200c\u200d](?=[\x00-\x7f])"
_INVISIBLE = re.compile(f"[{_LINE_BREAKS}{_BIDI_CONTROLS}{_IGNORABLE}]|{_HIDDEN_NEXT_TO_ASCII}")

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), nothing from 1.1.
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT10 = re.compile(r"[-+]?[0-9]+")
_INT8 = re.compile(r"0o[0-7]+")
_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_SPECIAL_FLOAT = re.compile(r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_NUMBER = re.compile("|".join(p.pattern for p in (_INT10, _INT8, _INT16, _FLOAT, _SPECIAL_FLOAT)))
_NUMERIC_START = frozenset("0123456789+-.")
_FILE_START = yaml.Mark("", 0, 0, 0, "", 0)  # for problems about the whole file


@dataclass(frozen=True, slots=True)
class Document:
    """A loaded YAML file: plain data plus where each value was written.

    ``spans``/``key_spans`` map a JSON Pointer to the 1-based (line, column) of the value and of
    its mapping key; ``plain`` holds the pointers of unquoted scalars.
    """

    path: str
    data: dict[str, Any]
    sha256: str
    spans: Mapping[str, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)
    key_spans: Mapping[str, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)
    plain: frozenset[str] = field(default_factory=frozenset, repr=False, compare=False)

    def locate(self, pointer: str) -> Location:
        """Where the value at ``pointer`` is; for a missing one, where its nearest existing parent is."""
        probe = pointer
        while probe not in self.spans:
            if not probe:
                return Location(self.path, None, None, pointer)
            probe = probe.rpartition("/")[0]
        line, column = self.spans[probe]
        return Location(self.path, line, column, pointer)

    def locate_key(self, pointer: str) -> Location:
        """Where the key of the mapping member at ``pointer`` is (what 'unknown field' points at)."""
        span = self.key_spans.get(pointer)
        if span is None:
            return self.locate(pointer)
        return Location(self.path, span[0], span[1], pointer)

    def is_plain_scalar(self, pointer: str) -> bool:
        """True when that value was written unquoted, so a type error can say 'quote it'."""
        return pointer in self.plain


def load_yaml_file(
    path: Path, *, display: str | None = None, max_bytes: int = MAX_DOCUMENT_BYTES
) -> Document:
    """Read and load ``path``; ``display`` is the name errors show (default: ``str(path)``)."""
    shown = str(path) if display is None else display
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)  # bounded even for /dev/zero or a FIFO
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise InputError.one("yaml.read", f"cannot read the file: {reason}", Location(shown)) from None
    return load_yaml_bytes(raw, shown, max_bytes=max_bytes)


def load_yaml_bytes(raw: bytes, path: str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> Document:
    """Load one strict YAML document whose top level is a mapping; raise :class:`InputError` otherwise."""
    if len(raw) > max_bytes:
        raise InputError.one(
            "yaml.too-large",
            f"the file is larger than {max_bytes} bytes; refusing to parse it",
            Location(path),
            expected=max_bytes,
            actual=len(raw),
        )
    text = _decode(raw, path)
    builder = _Builder(path)
    data = builder.build(text)
    return Document(
        path=path,
        data=data,
        sha256=hashlib.sha256(raw).hexdigest(),
        spans=builder.spans,
        key_spans=builder.key_spans,
        plain=frozenset(builder.plain),
    )


def _decode(raw: bytes, path: str) -> str:
    """Strict UTF-8 (a UTF-8 BOM is allowed and dropped); anything else is refused with its position."""

    def fail(offset: int, message: str) -> InputError:
        start = raw.rfind(b"\n", 0, offset) + 1
        if start == 0 and raw.startswith(_UTF8_BOM):
            start = len(_UTF8_BOM)  # the parser does not count it either
        line = raw.count(b"\n", 0, offset) + 1
        column = len(raw[start:offset].decode("utf-8", errors="replace")) + 1
        return InputError(violations=(Violation("yaml.encoding", message, Location(path, line, column)),))

    for bom, name in _BOMS:
        if raw.startswith(bom):
            raise fail(0, f"the file starts with a {name} byte order mark; save it as UTF-8")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise fail(nul, f"NUL byte at byte offset {nul}; YAML files are text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(exc.start, f"not valid UTF-8 at byte offset {exc.start}") from None
    text = text.removeprefix("\ufeff")
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        offset = len(text[: bad.start()].encode("utf-8")) + (len(raw) - len(text.encode("utf-8")))
        raise fail(offset, f"control character U+{ord(bad.group()):04X} is not allowed in YAML")
    _refuse_invisible(text, path)
    return text


def _refuse_invisible(text: str, path: str) -> None:
    """Every NEL, LINE/PARAGRAPH SEPARATOR, bidi control and invisible character, at the line and
    column editors show."""
    if text.isascii():
        return  # fast path: most files hold none
    problems = []
    for found in _INVISIBLE.finditer(text):
        start, char = found.start(), found.group()
        line = text.count("\n", 0, start) + 1
        column = start - text.rfind("\n", 0, start)
        if char in _LINE_BREAKS:
            effect = "breaks the line for YAML but not for editors or grep"
        elif char in _BIDI_CONTROLS:
            effect = "reorders the text shown on screen (a bidirectional control)"
        else:
            effect = "is invisible: the text differs from what is shown"
        escape = f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"
        message = f"U+{ord(char):04X} {effect}; remove it (or write the escape {escape} in quotes)"
        problems.append(Violation("yaml.invisible-char", message, Location(path, line, column)))
        if len(problems) >= _MAX_VIOLATIONS:
            break
    if problems:
        raise InputError(violations=tuple(problems))


class _Fatal(Exception):
    """Parsing cannot go on; the collected violations are final."""


class _Builder:
    """One pass over the event stream: plain values, the source map and every violation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.spans: dict[str, tuple[int, int]] = {}
        self.key_spans: dict[str, tuple[int, int]] = {}
        self.plain: list[str] = []
        self.violations: list[Violation] = []
        self.events: Any = None
        self.anchors: set[str] = set()

    def build(self, text: str) -> dict[str, Any]:
        self.events = _EventSource(text)
        data: Any = None
        try:
            data = self._stream()
        except _Fatal:
            pass
        except yaml.MarkedYAMLError as exc:
            self._syntax(exc)
        except yaml.YAMLError as exc:  # e.g. a ReaderError: no mark, still bad input
            self.violations.append(Violation("yaml.syntax", str(exc), Location(self.path)))
        finally:
            self.events.dispose()
        if self.violations:
            raise InputError(violations=tuple(self.violations))
        return data  # type: ignore[no-any-return]  # _stream checked it is a dict

    def _syntax(self, exc: yaml.MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        rule_id = "yaml.syntax"
        # libyaml (bundled from PyYAML 6.0.4) has a nesting limit of its own, above MAX_DEPTH, that a flow
        # collection reaches before its events get to our check: still "too deep", not a syntax error.
        if "nesting" in message.lower() or "depth" in message.lower():
            rule_id, message = "yaml.depth", f"nested deeper than {MAX_DEPTH} levels"
        location = (
            Location(self.path) if mark is None else Location(self.path, mark.line + 1, mark.column + 1)
        )
        self.violations.append(Violation(rule_id, message, location))

    def _report(self, rule_id: str, message: str, mark: Any, pointer: str = "") -> None:
        """Record a problem and go on (up to a cap: a hostile file must not cost more than that)."""
        self.violations.append(
            Violation(rule_id, message, Location(self.path, mark.line + 1, mark.column + 1, pointer))
        )
        if len(self.violations) >= _MAX_VIOLATIONS:
            raise _Fatal

    def _fatal(self, rule_id: str, message: str, mark: Any, pointer: str = "") -> _Fatal:
        """Record a problem after which parsing cannot go on; the caller raises the result."""
        self._report(rule_id, message, mark, pointer)
        return _Fatal()

    def _stream(self) -> Any:
        get = self.events.get_event
        get()  # StreamStartEvent
        event = get()
        if isinstance(event, yaml.StreamEndEvent):
            raise self._fatal("yaml.empty", "the file is empty (only comments or whitespace)", _FILE_START)
        self._directives(event)
        root = get()
        if isinstance(root, yaml.ScalarEvent) and root.value == "" and not root.style and root.tag is None:
            raise self._fatal("yaml.empty", "the document is empty", event.start_mark)
        data = self._node(root, "", 1)
        get()  # DocumentEndEvent
        event = get()
        if isinstance(event, yaml.DocumentStartEvent):
            raise self._fatal(
                "yaml.multiple-documents",
                "a second YAML document starts here; put one document in each file",
                event.start_mark,
            )
        if not isinstance(root, yaml.MappingStartEvent):
            kind = "a list" if isinstance(root, yaml.SequenceStartEvent) else "a single value"
            self._report(
                "yaml.not-mapping", f"the top level must be a mapping of fields, not {kind}", root.start_mark
            )
        return data

    def _directives(self, event: Any) -> None:
        if event.version is not None and event.version != (1, 2):
            major, minor = event.version
            self._report(
                "yaml.directive",
                f"%YAML {major}.{minor} is not supported; Sandrun reads YAML 1.2 (remove the directive)",
                event.start_mark,
            )
        if event.tags:
            self._report("yaml.tag", "%TAG directives are not supported (tags are refused)", event.start_mark)

    def _node(self, event: Any, pointer: str, depth: int) -> Any:
        mark = event.start_mark
        self.spans[pointer] = (mark.line + 1, mark.column + 1)
        if event.anchor is not None:  # set on aliases and on anchored nodes
            self._anchor(event, pointer)
            if isinstance(event, yaml.AliasEvent):
                return None
        if event.tag is not None:
            hint = "; quote the value instead" if isinstance(event, yaml.ScalarEvent) else ""
            self._report(
                "yaml.tag", f"explicit tag {_shown_tag(event.tag)} is not supported{hint}", mark, pointer
            )
        if isinstance(event, yaml.ScalarEvent):
            if event.style:
                return event.value
            self.plain.append(pointer)
            return self._resolve(event, pointer)
        if depth > MAX_DEPTH:
            raise self._fatal("yaml.depth", f"nested deeper than {MAX_DEPTH} levels", mark, pointer)
        if isinstance(event, yaml.SequenceStartEvent):
            return self._sequence(pointer, depth)
        return self._mapping(pointer, depth)

    def _sequence(self, pointer: str, depth: int) -> list[Any]:
        get = self.events.get_event
        items: list[Any] = []
        event = get()
        while not isinstance(event, yaml.SequenceEndEvent):
            items.append(self._node(event, f"{pointer}/{len(items)}", depth + 1))
            event = get()
        return items

    def _mapping(self, pointer: str, depth: int) -> dict[str, Any]:
        get = self.events.get_event
        members: dict[str, Any] = {}
        event = get()
        while not isinstance(event, yaml.MappingEndEvent):
            key, child = self._key(event, pointer)
            mark = event.start_mark
            value_event = get()
            if key in members:
                first = self.key_spans[child][0]
                self._report(
                    "yaml.duplicate-key",
                    f"duplicate key {key!r} (first defined at line {first})",
                    mark,
                    child,
                )
                self._skip(value_event)
            else:
                self.key_spans[child] = (mark.line + 1, mark.column + 1)
                members[key] = self._node(value_event, child, depth + 1)
            event = get()
        return members

    def _anchor(self, event: Any, pointer: str) -> None:
        """Refuse an anchor or alias, once per name: aliases are never expanded, so no blow-up."""
        if event.anchor in self.anchors:
            return
        self.anchors.add(event.anchor)
        sigil = "*" if isinstance(event, yaml.AliasEvent) else "&"
        message = f"{sigil}{event.anchor}: anchors and aliases are not supported; write the value out in full"
        self._report("yaml.alias", message, event.start_mark, pointer)

    def _key(self, event: Any, pointer: str) -> tuple[str, str]:
        """The key as a string and the member's pointer; a bad key is reported and stands in as text."""
        if isinstance(event, yaml.ScalarEvent):
            text: str = event.value
        elif isinstance(event, yaml.AliasEvent):
            text = f"*{event.anchor}"
        else:
            text = f"<complex key at line {event.start_mark.line + 1}>"
        child = pointer + "/" + (escape_pointer_token(text) if "~" in text or "/" in text else text)
        if isinstance(event, yaml.ScalarEvent):
            self._check_key(event, child)
        elif isinstance(event, yaml.AliasEvent):
            self._anchor(event, child)
        else:
            message = "complex mapping keys are not supported; keys must be strings"
            self._report("yaml.key-type", message, event.start_mark, pointer)
            self._skip(event)
        return text, child

    def _check_key(self, event: Any, child: str) -> None:
        """A scalar key must be a string as written: no anchor, no tag, not ``<<``, not a typed value."""
        mark, text = event.start_mark, event.value
        if event.anchor is not None:
            self._anchor(event, child)
        elif event.tag is not None:
            self._report("yaml.tag", f"explicit tag {_shown_tag(event.tag)} is not supported", mark, child)
        elif event.style:
            pass  # quoted: always a string
        elif text == "<<":
            message = "merge keys (<<) are not supported; write the fields out"
            self._report("yaml.merge-key", message, mark, child)
        elif _typed(text):
            shown = text or "(empty)"
            self._report("yaml.key-type", f"key {shown} is not a string in YAML 1.2; quote it", mark, child)

    def _skip(self, event: Any) -> None:
        """Consume a node without building it (the value of a duplicate key, a complex key)."""
        get = self.events.get_event
        level = 0
        while True:
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                level += 1
                if level > MAX_DEPTH:
                    raise self._fatal(
                        "yaml.depth", f"nested deeper than {MAX_DEPTH} levels", event.start_mark
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                level -= 1
            if level == 0:
                return
            event = get()

    def _resolve(self, event: Any, pointer: str) -> Any:
        """A plain scalar per the YAML 1.2 core schema."""
        text: str = event.value
        if text in _NULLS:
            return None
        if text in _BOOLS:
            return _BOOLS[text]
        if text[0] not in _NUMERIC_START:  # fast path: most values are words
            return text
        if _INT10.fullmatch(text):
            try:
                return int(text)
            except ValueError:  # over Python's int digit limit
                self._report("yaml.number", "integer with too many digits", event.start_mark, pointer)
                return None
        if _INT8.fullmatch(text) or _INT16.fullmatch(text):
            value = int(text[2:], 8 if text[1] == "o" else 16)  # linear: no digit limit in these bases
            if value.bit_length() > _MAX_INT_BITS:  # Python could not print it (jsonschema would try)
                self._report("yaml.number", "integer with too many digits", event.start_mark, pointer)
                return None
            return value
        if _FLOAT.fullmatch(text):
            number = float(text)
            if math.isfinite(number):
                return number
            self._report("yaml.special-float", f"{text} is too large for a number", event.start_mark, pointer)
            return None
        if _SPECIAL_FLOAT.fullmatch(text):
            self._report(
                "yaml.special-float",
                f"{text} (infinity / not-a-number) is not accepted here",
                event.start_mark,
                pointer,
            )
            return None
        return text


def _shown_tag(tag: str) -> str:
    """A tag as it is usually written (``!!str``), not in its expanded form."""
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _typed(text: str) -> bool:
    """Would this plain scalar resolve to something other than a string (null, bool, number)?"""
    if text in _NULLS or text in _BOOLS:
        return True
    return text[0] in _NUMERIC_START and _NUMBER.fullmatch(text) is not None
