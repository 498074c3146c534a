"""The JSON Schemas of manifests and policies, and validation that reports every problem with its line.

The schemas (Draft 2020-12, package data) are the contract editors see: every object is closed
(``additionalProperties: false``), every name, digest, size, duration and host pattern has an
anchored ``pattern`` for the editor, and a ``format`` that Sandrun checks with the same strict
parsers the compiler uses (:mod:`runner.units`, :mod:`runner.hosts`).

jsonschema has traps this module closes rather than documents:

* ``format`` is only an annotation unless a format checker is passed: one always is;
* ``1.0`` is an ``integer`` and NaN a ``number`` by default: both types are redefined
  (``true`` was never a number there, and stays refused);
* ``pattern`` is unanchored and ``$`` accepts a trailing newline: every pattern starts with ``^``
  and ends with ``(?![\\s\\S])``;
* one ``additionalProperties`` error names all unknown keys at once: it is split into one
  violation per key, located at the key, with the closest known field suggested;
* ``anyOf``/``oneOf`` errors hide the useful one in ``context``: ``best_match`` picks it.

Only this package imports ``jsonschema`` and ``fastjsonschema`` (both slow to import), and only on
the first validation; validators are built once per schema kind and cached. jsonschema is thorough
but slow (about 2 ms for a 60-line manifest), so a valid document, the common case, is recognised
by fastjsonschema (the same schema compiled to Python code, over ten times faster) and jsonschema
runs only to explain a document that check refused. A document the fast check accepts skips
jsonschema, so that check must never be looser; where fastjsonschema reads the schema more loosely
it is closed here, see :func:`_fast_check`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from runner.errors import Location, Violation, escape_pointer_token
from runner.rules import RULES
from runner.units import parse_duration, parse_size

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

    from runner.source import Document

__all__ = ["SchemaKind", "SCHEMA_KINDS", "schema_text", "validate"]

SchemaKind = Literal["manifest", "policy"]
SCHEMA_KINDS: tuple[SchemaKind, ...] = get_args(SchemaKind)
#: Schemas of Sandrun's own files (policy tests: ``runner.policytest``), validated the same way.
TOOLING_KINDS = ("policytest",)


def schema_text(kind: SchemaKind) -> str:
    """The schema exactly as shipped (``sandrun schema manifest`` prints it)."""
    if kind not in SCHEMA_KINDS + TOOLING_KINDS:
        raise ValueError(f"unknown schema kind {kind!r}; expected one of {', '.join(SCHEMA_KINDS)}")
    # A file beside this module, as the package installs it (importlib.resources: ~10 ms a start).
    return Path(__file__).with_name(f"{kind}.schema.json").read_text(encoding="utf-8")


#: Stop after this many problems, like the YAML loader: a hostile document must not cost more.
MAX_PROBLEMS = 50


def validate(document: Document, kind: SchemaKind) -> list[Violation]:
    """Every schema violation of ``document`` (up to :data:`MAX_PROBLEMS`), one per field and
    problem, sorted by position."""
    if _fast_check(kind)(document.data):
        return []
    found: dict[tuple[str, str], Violation] = {}
    capped = False
    for error in _validator(kind).iter_errors(document.data):
        for violation in _violations(document, _most_relevant(error)):
            found.setdefault((violation.rule_id, _located(violation).pointer), violation)
        if len(found) >= MAX_PROBLEMS:
            capped = True
            break
    kept = [v for (rule_id, pointer), v in found.items() if not _is_noise(rule_id, pointer, found)]
    kept.sort(key=_position)
    if capped:
        message = f"more than {MAX_PROBLEMS} schema problems; the rest are not checked (fix these first)"
        kept.append(Violation("schema.max-problems", message, Location(document.path)))
    return kept


def _is_noise(rule_id: str, pointer: str, found: dict[tuple[str, str], Violation]) -> bool:
    """Whether another violation of the same value already says it better.

    A value of the wrong type fails every other keyword too; a value failing both its shape
    ``pattern`` and its strict ``format`` is best explained by the parser behind the format.
    """
    if rule_id != "schema.type" and ("schema.type", pointer) in found:
        return True
    return rule_id == "schema.pattern" and ("schema.format", pointer) in found


def _located(violation: Violation) -> Location:
    return violation.location or Location("")  # never None here: every schema violation is located


def _position(violation: Violation) -> tuple[int, int, str, str]:
    location = _located(violation)
    return (location.line or 0, location.column or 0, location.pointer, violation.rule_id)


# --- the formats: one strict parser each, shared by both validators ---------------------------


class _FormatProblem(ValueError):
    """A strict parser refused a value; its message is the reason shown to the user."""


def _hosts_parser(name: str) -> Callable[[str], object]:
    def parse(text: str) -> object:
        from runner import hosts  # lazily: a module that is not needed costs nothing

        return getattr(hosts, name)(text)

    return parse


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _parse_date(text: str) -> date:
    """``YYYY-MM-DD`` and nothing else (``date.fromisoformat`` alone also takes ``20270630``)."""
    if _DATE.fullmatch(text):
        with contextlib.suppress(ValueError):  # 2027-13-01
            return date.fromisoformat(text)
    raise ValueError(f"{_shown(text)} is not a valid date (YYYY-MM-DD)")


#: Every format the schemas use, and the parser whose verdict it is. Each raises a ``ValueError``
#: (``UnitError``, ``HostPatternError``, ...) whose message is written for people. No other format
#: is checked by either validator: the fast check refuses a schema naming one (``_as_draft_07``).
_FORMAT_PARSERS: dict[str, Callable[[str], object]] = {
    "sandrun-size": parse_size,
    "sandrun-duration": parse_duration,
    "sandrun-host-pattern": _hosts_parser("parse_host_pattern"),
    "sandrun-block-entry": _hosts_parser("parse_block_entry"),
    "date": _parse_date,
}


def _format_check(parse: Callable[[str], object]) -> Callable[[object], bool]:
    """For jsonschema: the parser's reason travels as the error's ``cause``."""

    def check(instance: object) -> bool:
        if isinstance(instance, str):  # other types are the ``type`` keyword's business
            try:
                parse(instance)
            except ValueError as exc:
                raise _FormatProblem(str(exc)) from exc
        return True

    return check


def _format_test(parse: Callable[[str], object]) -> Callable[[str], bool]:
    """For fastjsonschema (which calls it on strings only): yes or no, never an exception."""

    def test(text: str) -> bool:
        try:
            parse(text)
        except ValueError:
            return False
        return True

    return test


# --- jsonschema: finds and explains every error ----------------------------------------------


def _is_integer(instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)  # 1.0 and true are not


def _is_number(instance: object) -> bool:
    return math.isfinite(instance) if isinstance(instance, float) else _is_integer(instance)  # NaN is not


#: JSON types as Sandrun means them (the fast check keeps to them too: see ``_plain_json``).
_TYPES: dict[str, Callable[[object], bool]] = {
    "null": lambda instance: instance is None,
    "boolean": lambda instance: isinstance(instance, bool),
    "integer": _is_integer,
    "number": _is_number,
    "string": lambda instance: isinstance(instance, str),
    "array": lambda instance: isinstance(instance, list),
    "object": lambda instance: isinstance(instance, dict),
}


def _identity(value: object) -> object:
    """A hashable stand-in for a JSON value, equal exactly when jsonschema's ``equal`` says so
    (``true`` is not ``1``; ``1.0`` is ``1``; mappings ignore key order)."""
    if isinstance(value, bool):
        return (bool, value)
    if isinstance(value, dict):
        return frozenset((key, _identity(item)) for key, item in value.items())
    if isinstance(value, list):
        return tuple(_identity(item) for item in value)
    return value


def _first_duplicate(items: list[Any]) -> tuple[bool, Any]:
    """``(True, item)`` for the first item listed again, in one pass; ``(False, None)`` if none."""
    seen: set[object] = set()
    for item in items:
        key = _identity(item)
        if key in seen:
            return True, item
        seen.add(key)
    return False, None


def _unique_items(validator: Any, unique: bool, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """``uniqueItems`` in one pass: jsonschema's own compares every pair when items are mappings."""
    from jsonschema.exceptions import ValidationError

    if unique and isinstance(instance, list) and _first_duplicate(instance)[0]:
        yield ValidationError("has non-unique elements")


@functools.cache
def _validator_class() -> Any:
    from jsonschema import Draft202012Validator, TypeChecker, validators

    types = TypeChecker(
        {name: (lambda _checker, instance, test=test: test(instance)) for name, test in _TYPES.items()}
    )
    return validators.extend(
        Draft202012Validator, validators={"uniqueItems": _unique_items}, type_checker=types
    )


@functools.cache
def _validator(kind: SchemaKind) -> Validator:
    from jsonschema import FormatChecker

    formats = FormatChecker(formats=())  # none of jsonschema's own: Sandrun's, the same as the fast check's
    for name, parse in _FORMAT_PARSERS.items():
        formats.checks(name, raises=_FormatProblem)(_format_check(parse))
    validator: Validator = _validator_class()(json.loads(schema_text(kind)), format_checker=formats)
    return validator


# --- fastjsonschema: recognises a valid document, fast -----------------------------------------

_DRAFT_07 = "http://json-schema.org/draft-07/schema#"

#: Keywords fastjsonschema's Draft 7 reads exactly as jsonschema's Draft 2020-12 does (``$ref`` once
#: ``_as_draft_07`` has moved it). fastjsonschema ignores a keyword it does not know, which would make
#: the fast check looser than jsonschema: a schema using any keyword not listed here is refused.
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples", "default"})
_VALUE_KEYWORDS = frozenset(
    {
        "type",
        "enum",
        "const",
        "required",
        "minItems",
        "maxItems",
        "minLength",
        "uniqueItems",
        "minimum",
        "maximum",
    }
    | {"pattern", "format", "$ref"}
)
_SUBSCHEMA_KEYWORDS = frozenset(
    {"not", "if", "then", "else", "items", "additionalProperties", "propertyNames"}
)
_SUBSCHEMA_LISTS = frozenset({"anyOf", "allOf"})
_SUBSCHEMA_MAPS = frozenset({"properties", "$defs"})


def _as_draft_07(schema: Any) -> Any:
    """A copy of ``schema`` that fastjsonschema's Draft 7 reads as jsonschema reads the original.

    Draft 7 ignores the keywords next to a ``$ref`` (2020-12 applies them): the ``$ref`` moves into
    an ``allOf``. fastjsonschema reads ``$`` in a pattern as ``\\Z`` and checks formats jsonschema is
    not given: a schema with either is refused (a stricter check turns looser under ``not``).
    """
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, dict):
        raise ValueError(f"not a schema: {schema!r}")
    copy: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA_KEYWORDS:
            copy[key] = _as_draft_07(value)
        elif key in _SUBSCHEMA_LISTS:
            copy[key] = [_as_draft_07(sub) for sub in value]
        elif key in _SUBSCHEMA_MAPS:
            copy[key] = {name: _as_draft_07(sub) for name, sub in value.items()}
        elif key in _VALUE_KEYWORDS or key in _ANNOTATIONS:
            copy[key] = value
        else:
            raise ValueError(f"keyword {key!r} is not supported by the fast check")
    if "$" in copy.get("pattern", ""):
        raise ValueError(f"pattern {copy['pattern']!r}: fastjsonschema reads '$' as '\\Z'")
    if "format" in copy and copy["format"] not in _FORMAT_PARSERS:
        raise ValueError(f"format {copy['format']!r} has no parser in _FORMAT_PARSERS")
    if "$ref" in copy and copy.keys() - _ANNOTATIONS - {"$ref"}:
        copy["allOf"] = [{"$ref": copy.pop("$ref")}, *copy.get("allOf", ())]
    return copy


_SCALARS = frozenset({str, int, bool, type(None)})


def _plain_json(data: Any) -> bool:
    """Whether ``data`` holds only values fastjsonschema types exactly as ``_TYPES`` does.

    Its ``integer`` takes ``1.0``, its ``number`` NaN and ``Decimal``, its ``array`` a tuple: a
    document holding a whole or non-finite float, or anything but plain JSON, is left to jsonschema
    (exact types, so a subclass is too). Such documents are rare; YAML gives neither NaN nor tuples.
    """
    stack = [data]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            for key in node:  # a loop, not all(): this walk is a tenth of the fast check's time
                if type(key) is not str:
                    return False
            stack.extend(node.values())
        elif kind is list:
            stack.extend(node)
        elif kind is float:
            if node.is_integer() or not math.isfinite(node):
                return False
        elif kind not in _SCALARS:
            return False
    return True


def _fast_formats() -> dict[str, Callable[[str], bool]]:
    return {name: _format_test(parse) for name, parse in _FORMAT_PARSERS.items()}


def _fast_definition(kind: SchemaKind) -> Any:
    return _as_draft_07(json.loads(schema_text(kind))) | {"$schema": _DRAFT_07}


#: The line of fastjsonschema's generated code that loads its exceptions (and so its whole package,
#: ~7 ms a start), and the line the committed code has instead (``runner.schema._fast_errors``).
_FASTJSONSCHEMA_IMPORT = "from fastjsonschema import JsonSchemaValueException, JsonSchemaValuesException\n"
_OWN_ERRORS_IMPORT = (
    "from runner.schema._fast_errors import JsonSchemaValueException, JsonSchemaValuesException\n"
)


def fast_check_code(kind: SchemaKind) -> str:
    """The source of ``runner/schema/_fast_<kind>.py``: the fast check generated ahead of time, so a
    start costs an import instead of generating and compiling it (~150 ms). Written by
    ``python -m runner.schema``; used only while its schema digest matches."""
    import hashlib

    import fastjsonschema

    definition = _fast_definition(kind)
    formats = _fast_formats()  # the code calls them by name, from the ``custom_formats`` it is given
    code = fastjsonschema.compile_to_code(definition, formats=formats, use_default=False)
    if _FASTJSONSCHEMA_IMPORT not in code:
        raise ValueError("fastjsonschema's generated code no longer imports its exceptions as expected")
    code = code.replace(_FASTJSONSCHEMA_IMPORT, _OWN_ERRORS_IMPORT, 1)
    resolver, _ = fastjsonschema._factory(definition, {}, formats, False, True, True, True)
    digest = hashlib.sha256(schema_text(kind).encode("utf-8")).hexdigest()
    header = (
        f"# Generated by `python -m runner.schema` from {kind}.schema.json: do not edit.\n"
        "# mypy: ignore-errors\n"
        f'SCHEMA_SHA256 = "{digest}"\n'
    )
    return f"{header}{code}\n\nCHECK = {resolver.get_scope_name()}\n"


def _generated_check(kind: SchemaKind) -> Callable[..., Any] | None:
    """The committed check of ``kind`` when it was generated from this very schema; otherwise None
    (then it is generated now, never a stale one used). The committed code imports nothing of
    fastjsonschema (see :data:`_OWN_ERRORS_IMPORT`), so it runs as tested whichever version is
    installed; ``tests/unit/test_schema_generated.py`` says when a new version calls for new code."""
    import hashlib
    import importlib

    try:
        module = importlib.import_module(f"{__name__}._fast_{kind}")
    except ImportError:
        return None
    digest = hashlib.sha256(schema_text(kind).encode("utf-8")).hexdigest()
    if digest != module.SCHEMA_SHA256:
        return None
    check: Callable[..., Any] = module.CHECK
    return check


@functools.cache
def _fast_check(kind: SchemaKind) -> Callable[[Any], bool]:
    """Whether a document is valid; ``False`` may also mean "ask jsonschema", never the reverse."""
    from runner.schema._fast_errors import JsonSchemaValueException

    formats = _fast_formats()
    generated = _generated_check(kind)
    refused: tuple[type[Exception], ...] = (JsonSchemaValueException,)
    if generated is not None:
        check: Callable[..., Any] = functools.partial(generated, custom_formats=formats)
    else:
        import fastjsonschema

        check = fastjsonschema.compile(
            _fast_definition(kind),
            formats=formats,
            use_default=False,  # it would write each ``default`` into the document
        )
        refused = (fastjsonschema.JsonSchemaValueException,)

    def is_valid(data: Any) -> bool:
        try:
            check(data)
        except refused:
            return False
        return _plain_json(data)

    return is_valid


# --- turning jsonschema errors into violations -------------------------------------------------


def _most_relevant(error: ValidationError) -> ValidationError:
    """For ``anyOf``/``oneOf``, the error of the branch that came closest, when one clearly did."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        from jsonschema.exceptions import best_match

        return best_match([error]) or error
    return error


def _rule_id(keyword: str) -> str:
    """``minItems`` -> ``schema.min-items``: rule ids are kebab-case like every other.

    A keyword without a registered rule of its own (none today) is ``schema.invalid``.
    """
    rule_id = "schema." + re.sub(r"(?<=[a-z])(?=[A-Z])", "-", keyword).lower()
    return rule_id if rule_id in RULES else "schema.invalid"


def _pointer(tokens: Any) -> str:
    return "".join("/" + escape_pointer_token(token) for token in tokens)


def _violations(document: Document, error: ValidationError) -> Iterator[Violation]:
    pointer = _pointer(error.absolute_path)
    keyword = str(error.validator)
    if "propertyNames" in error.absolute_schema_path:  # the instance is a key of the object
        key = pointer + "/" + escape_pointer_token(str(error.instance))
        message = f"key {_message(document, error, key)}"
        yield Violation(_rule_id(keyword), message, document.locate_key(key), actual=error.instance)
    elif keyword == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        for name in error.instance:
            if name not in known:
                key = pointer + "/" + escape_pointer_token(name)
                yield Violation(
                    "schema.unknown-field", _unknown_field(name, known), document.locate_key(key), actual=name
                )
    elif keyword == "required":
        for name in error.validator_value:
            if name not in error.instance:
                member = pointer + "/" + escape_pointer_token(name)
                message = f"missing required field {name!r}"
                condition = error.schema.get("description")  # says why, for an if/then requirement
                if condition and list(error.relative_schema_path)[-2:-1] == ["then"]:
                    message += f": {_lower_first(condition)}"
                yield Violation("schema.required", message, document.locate(member))
    else:
        yield Violation(
            _rule_id(keyword),
            _message(document, error, pointer),
            document.locate(pointer),
            expected=_jsonable(error.validator_value),
            actual=_jsonable(error.instance),
        )


def _unknown_field(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown field {name!r}; did you mean {close[0]!r}?"
    if known:
        return f"unknown field {name!r}; known fields: {', '.join(known)}"
    return f"unknown field {name!r}; this mapping takes no fields"


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _described(value: object) -> str:
    """How a value reads in a message: ``the integer 777``, ``a list``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"the integer {_shown(value)}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_shown(value)}"
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else repr(value)


def _shown(value: object) -> str:
    """``repr`` kept short, and safe for integers too long to print."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a huge integer"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> Any:
    """Keep ``expected``/``actual`` small and printable: scalars as they are, structures elided."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, bool)) or value is None:
        return value if not isinstance(value, str) or len(value) <= 200 else value[:200] + "..."
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _lower_first(text: str) -> str:
    """``Tool name`` -> ``tool name``; ``SHA-256 digest`` and ``Ed25519 signature`` stay as they are."""
    first = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if first.isalpha() and first[1:].islower() else text


def _what(schema: dict[str, Any]) -> str:
    """``a valid tool name: lowercase letters, ...`` from the failing schema's title/description."""
    title, description = schema.get("title"), schema.get("description")
    if title and description:
        return f"a valid {_lower_first(title)}: {_lower_first(description)}"
    return f"a valid {_lower_first(title)}" if title else "valid here"


def _message(document: Document, error: ValidationError, pointer: str) -> str:
    """The message for a keyword that failed on one value."""
    keyword, expected, value, schema = error.validator, error.validator_value, error.instance, error.schema
    fmt = schema.get("format") if isinstance(schema, dict) else None
    if fmt in ("sandrun-size", "sandrun-duration") and keyword in ("type", "minimum", "maximum"):
        try:  # the strict parser explains a wrong size or duration best ("has no unit", ...)
            _FORMAT_PARSERS[fmt](value)  # type: ignore[arg-type]
        except ValueError as exc:
            return str(exc)
    if keyword == "type":
        types = [expected] if isinstance(expected, str) else list(expected)
        message = f"expected {' or '.join(_TYPE_WORDS.get(t, t) for t in types)}, got {_described(value)}"
        if "string" in types and value is not None and document.is_plain_scalar(pointer):
            message += '; quote it ("...") so YAML keeps the text as written'
        return message
    if keyword == "format":
        return str(error.cause)  # every format is Sandrun's, and its parser says why (_format_check)
    if keyword == "const":
        return f"expected {expected!r}, got {_described(value)}"
    if keyword == "enum":
        choices = [str(choice) for choice in expected]
        close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{_shown(value)} is not one of {', '.join(map(repr, expected))}{hint}"
    if keyword in ("minimum", "exclusiveMinimum"):
        return f"{_shown(value)} is too small; the minimum is {expected}"
    if keyword in ("maximum", "exclusiveMaximum"):
        return f"{_shown(value)} is too large; the maximum is {expected}"
    if keyword in ("minItems", "minLength", "minProperties"):
        return "must not be empty" if expected == 1 else f"needs at least {expected} {_UNITS[keyword]}"
    if keyword == "uniqueItems":
        return f"{_shown(_first_duplicate(value)[1])} is listed more than once"
    if keyword == "maxItems":
        return f"has {len(value)} items; at most {expected} are allowed"
    if keyword in ("pattern", "anyOf", "oneOf"):
        return f"{_shown(value)} is not {_what(schema)}"
    return str(error.message)


_UNITS = {"minItems": "items", "minLength": "characters", "minProperties": "fields"}
