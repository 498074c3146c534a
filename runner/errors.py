"""One error model for all of Sandrun.

Every problem is a :class:`Violation`: a rule id, a message and a :class:`Location`, as data, so
tests assert ``rule_id`` and ``location`` instead of matching message text, and every front end
(text, JSON, GitHub annotations) renders the same facts. Errors that stop a stage carry all the
violations found, never only the first; ``cli`` is the only place that turns them into an exit code.
That exit code comes from the rule registry (:mod:`runner.rules`), not from the exception class:
the class only lets callers catch a kind of problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.rules import Category, Rule, exit_code_for, lookup
from runner.textsafe import safe_line

__all__ = [
    "EXIT_OK",
    "EXIT_JOB_FAILED",
    "EXIT_INVALID_INPUT",
    "EXIT_POLICY_DENIED",
    "EXIT_AUDIT_FAILED",
    "EXIT_INTERRUPTED",
    "Location",
    "Violation",
    "SandrunError",
    "InputError",
    "PolicyDenied",
    "AuditError",
    "error_for",
    "escape_pointer_token",
    "printable",
]

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_POLICY_DENIED = 3
EXIT_AUDIT_FAILED = 4
EXIT_INTERRUPTED = 130


def escape_pointer_token(token: str | int) -> str:
    """Escape one JSON Pointer reference token (RFC 6901)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def printable(text: str) -> str:
    """``text`` with every non-printable character (line breaks, ESC, bidi controls) escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a problem is: a file, a 1-based line and column when known, and a JSON Pointer."""

    file: str
    line: int | None = None
    column: int | None = None
    pointer: str = ""

    def child(self, *tokens: str | int) -> str:
        """The JSON Pointer of a field below this location."""
        return self.pointer + "".join("/" + escape_pointer_token(t) for t in tokens)

    def prefix(self) -> str:
        """``file:line:col`` (line and column only when known)."""
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "pointer": self.pointer}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: ``rule_id`` is stable and documented; ``message`` is for people."""

    rule_id: str
    message: str
    location: Location | None = None
    expected: Any = None
    actual: Any = None

    @property
    def rule(self) -> Rule:
        """The registered rule: its category, exit code and documentation."""
        return lookup(self.rule_id)

    def render(self) -> str:
        """``file:line:col: /json/pointer [rule.id] message`` on one line, whatever the input holds.

        A key with a line break (``"a\\nb": 1``) is in the pointer: printed raw it would start a
        second, forged problem line, nor may a CR or a bidirectional control make it read
        differently, so every part is shown with control characters escaped (:func:`printable`);
        the line then goes through :func:`~runner.textsafe.safe_line`, so it cannot start (or
        contain) a CI workflow command.
        """
        text = printable(" ".join(self.message.split()))
        if self.location is None:
            return safe_line(f"[{self.rule_id}] {text}")
        pointer = f" {printable(self.location.pointer)}" if self.location.pointer else ""
        return safe_line(f"{printable(self.location.prefix())}:{pointer} [{self.rule_id}] {text}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "message": self.message,
            "location": None if self.location is None else self.location.to_dict(),
            "expected": self.expected,
            "actual": self.actual,
        }


@dataclass(eq=False)
class SandrunError(Exception):
    """The root of every error Sandrun raises on purpose; carries one or more violations."""

    violations: tuple[Violation, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.violations:
            raise ValueError("a SandrunError needs at least one violation")
        Exception.__init__(self, self.violations[0].render())

    @classmethod
    def one(
        cls,
        rule_id: str,
        message: str,
        location: Location | None = None,
        **data: Any,
    ) -> SandrunError:
        return cls(violations=(Violation(rule_id, message, location, **data),))

    @property
    def rule_id(self) -> str:
        return self.violations[0].rule_id

    @property
    def exit_code(self) -> int:
        """The exit code of the most pressing rule broken (invalid input before denials)."""
        return exit_code_for(v.rule_id for v in self.violations)

    @property
    def location(self) -> Location | None:
        return self.violations[0].location

    def diagnostics(self) -> list[str]:
        """One line per violation, ready to print."""
        return [v.render() for v in self.violations]

    def __str__(self) -> str:
        return "\n".join(self.diagnostics())


@dataclass(eq=False)
class InputError(SandrunError):
    """Input that cannot be read, parsed or validated (rules of the invalid-input category, exit 2)."""


@dataclass(eq=False)
class PolicyDenied(SandrunError):
    """Valid input that the policy refuses (policy-denial rules, exit 3)."""


@dataclass(eq=False)
class AuditError(SandrunError):
    """An audit log that fails verification (audit-failure rules, exit 4)."""


_ERROR_CLASSES: dict[Category, type[SandrunError]] = {
    Category.INVALID_INPUT: InputError,
    Category.POLICY_DENIAL: PolicyDenied,
    Category.AUDIT_FAILURE: AuditError,
}


def error_for(violations: Sequence[Violation]) -> SandrunError:
    """One error for a mix of problems, of the class of the category that takes precedence."""
    categories = [v.rule.category for v in violations]
    first = min(categories, key=lambda c: c.precedence) if categories else Category.JOB_FAILURE
    return _ERROR_CLASSES.get(first, SandrunError)(violations=tuple(violations))
