"""The two exceptions the committed fast checks (``_fast_<kind>.py``) raise and catch.

fastjsonschema's generated code imports them from the fastjsonschema package, whose import costs
about 7 ms of every start (it loads its code generator too); the committed code imports these
instead (:func:`runner.schema.fast_check_code` swaps the line), so it needs nothing of
fastjsonschema at run time. Same names and constructor arguments as fastjsonschema's; only
:func:`runner.schema._fast_check` catches them, to answer "not valid".
"""

from __future__ import annotations

from typing import Any

__all__ = ["JsonSchemaValueException", "JsonSchemaValuesException"]


class JsonSchemaValueException(ValueError):
    """One value breaks one rule (the generated code stops at the first)."""

    def __init__(
        self,
        message: str,
        value: Any = None,
        name: str | None = None,
        definition: Any = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(message)
        self.value, self.name, self.definition, self.rule = value, name, definition, rule


class JsonSchemaValuesException(ValueError):
    """Several values break rules (generated code raises it only when asked not to stop at one)."""
