"""A compiled yes/no check of Sandrun's schemas, for the common case: a valid document.

jsonschema walks the schema anew for every value (a new validator object per step, a ``$ref``
lookup per reference): about 2 ms for a 60-line manifest. This turns the same schema, once, into
nested closures that answer "valid?" several times faster. Only when the answer is no does
jsonschema run, to find and explain every error; so this check only has to be *sound* (it never
says yes where jsonschema says no). Every keyword is exact except ``uniqueItems``, which says no
when unsure (unhashable items, ``1`` next to ``true``) and is therefore refused under ``not`` and
``if``. It compiles exactly the keywords Sandrun's schemas use and refuses any other, so a schema
change cannot silently weaken it; tests check that both agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Check", "compile_check"]

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$defs", "$comment", "title", "description", "examples", "default"}
)


def compile_check(
    schema: dict[str, Any], types: Mapping[str, Check], conforms: Callable[[Any, str], bool]
) -> Check:
    """``schema`` as one predicate, with the validator's own type tests and format checker."""
    return _Compiler(schema.get("$defs", {}), types, conforms).compile(schema)


def _all(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def check(value: Any) -> bool:
        return all(c(value) for c in checks)

    return check


def _unique(items: list[Any]) -> bool:
    try:
        return len(set(items)) == len(items)
    except TypeError:  # unhashable items: let jsonschema decide
        return False


class _Compiler:
    def __init__(
        self, defs: dict[str, Any], types: Mapping[str, Check], conforms: Callable[[Any, str], bool]
    ) -> None:
        self.defs = defs
        self.types = types
        self.conforms = conforms
        self.compiled: dict[str, Check] = {}
        self.negated = 0  # > 0 inside `not`/`if`, where a conservative "no" would turn into a "yes"

    def ref(self, ref: str) -> Check:
        name = ref.removeprefix("#/$defs/")
        if name == ref or "/" in name or name not in self.defs:
            raise ValueError(f"unsupported $ref {ref!r}")
        if name not in self.compiled:  # Sandrun's schemas are not recursive: no cycle to break
            self.compiled[name] = self.compile(self.defs[name])
        return self.compiled[name]

    def compile(self, schema: Any) -> Check:
        if not isinstance(schema, dict):
            raise ValueError(f"unsupported schema {schema!r}")
        checks = [
            self.keyword(key, value, schema) for key, value in schema.items() if key not in _ANNOTATIONS
        ]
        return _all(checks) if checks else (lambda value: True)

    def exact(self, schema: Any) -> Check:
        """Compile a schema whose "no" is used as a "yes": every keyword in it must be exact."""
        self.negated += 1
        try:
            return self.compile(schema)
        finally:
            self.negated -= 1

    def keyword(self, key: str, value: Any, schema: dict[str, Any]) -> Check:
        types = self.types
        is_object, is_array, is_string, is_number = (
            types[t] for t in ("object", "array", "string", "number")
        )
        if key == "$ref":
            return self.ref(value)
        if key == "type":
            tests = [types[name] for name in ([value] if isinstance(value, str) else value)]
            return lambda v: any(test(v) for test in tests)
        if key in ("const", "enum"):
            allowed = {value} if key == "const" else set(value)
            if not all(isinstance(a, str) for a in allowed):
                raise ValueError(f"only string {key} is supported")
            return lambda v: isinstance(v, str) and v in allowed
        if key == "required":
            return lambda v: not is_object(v) or all(name in v for name in value)
        if key == "properties":
            properties = {name: self.compile(sub) for name, sub in value.items()}
            return lambda v: not is_object(v) or all(c(v[n]) for n, c in properties.items() if n in v)
        if key == "additionalProperties":
            if "patternProperties" in schema:
                raise ValueError("patternProperties is not supported")
            known = set(schema.get("properties", {}))
            if value is False:
                return lambda v: not is_object(v) or all(name in known for name in v)
            extra = self.compile(value)
            return lambda v: not is_object(v) or all(extra(item) for n, item in v.items() if n not in known)
        if key == "propertyNames":
            names = self.compile(value)
            return lambda v: not is_object(v) or all(names(n) for n in v)
        if key == "items":
            if "prefixItems" in schema:
                raise ValueError("prefixItems is not supported")
            item = self.compile(value)
            return lambda v: not is_array(v) or all(item(i) for i in v)
        if key == "minItems":
            return lambda v: not is_array(v) or len(v) >= value
        if key == "uniqueItems":
            if self.negated:
                raise ValueError("uniqueItems (checked conservatively) is not supported under not/if")
            return (lambda v: not is_array(v) or _unique(v)) if value else (lambda v: True)
        if key == "minLength":
            return lambda v: not is_string(v) or len(v) >= value
        if key == "minimum":
            return lambda v: not is_number(v) or v >= value
        if key == "maximum":
            return lambda v: not is_number(v) or v <= value
        if key == "pattern":
            search = re.compile(value).search
            return lambda v: not is_string(v) or search(v) is not None
        if key == "format":
            return lambda v: self.conforms(v, value)
        if key in ("anyOf", "allOf"):
            subs = [self.compile(sub) for sub in value]
            combine = any if key == "anyOf" else all
            return lambda v: combine(sub(v) for sub in subs)
        if key == "not":
            inner = self.exact(value)
            return lambda v: not inner(v)
        if key == "if":
            condition = self.exact(value)
            then = self.compile(schema.get("then", {}))
            otherwise = self.compile(schema.get("else", {}))
            return lambda v: then(v) if condition(v) else otherwise(v)
        if key in ("then", "else"):
            return lambda v: True  # compiled with "if"
        raise ValueError(f"unsupported keyword {key!r}")
