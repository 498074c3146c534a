"""One error model for all of Sandrun.

Every problem is a :class:`Violation`: a rule id, a message and a :class:`Location`, as data, so
tests assert ``rule_id`` and ``location`` instead of matching message text, and every front end
(text, JSON, GitHub annotations) renders the same facts. Errors that stop a stage carry all the
violations found, never only the first; ``cli`` is the only place that turns them into an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    "escape_pointer_token",
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


def _visible(text: str) -> str:
    """``text`` with every non-printable character (controls, line and bidi marks) as its escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: ``rule_id`` is stable and documented; ``message`` is for people."""

    rule_id: str
    message: str
    location: Location | None = None
    expected: Any = None
    actual: Any = None

    def render(self) -> str:
        """``file:line:col: /json/pointer [rule.id] message`` on one line.

        File names, keys in pointers and messages come from input: a line break in a quoted key
        (``"a\\nb":``) must not split one problem over two lines, nor a CR or a bidirectional
        control make it read differently, so every invisible character is shown as an escape; the
        line then goes through :func:`~runner.textsafe.safe_line`, so it cannot start (or contain)
        a CI workflow command.
        """
        text = _visible(" ".join(self.message.split()))
        if self.location is None:
            return safe_line(f"[{self.rule_id}] {text}")
        pointer = f" {_visible(self.location.pointer)}" if self.location.pointer else ""
        return safe_line(f"{_visible(self.location.prefix())}:{pointer} [{self.rule_id}] {text}")

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
    exit_code: int = EXIT_INVALID_INPUT

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
    def location(self) -> Location | None:
        return self.violations[0].location

    def diagnostics(self) -> list[str]:
        """One line per violation, ready to print."""
        return [v.render() for v in self.violations]

    def __str__(self) -> str:
        return "\n".join(self.diagnostics())


@dataclass(eq=False)
class InputError(SandrunError):
    """Input that cannot be read, parsed or validated (exit code 2)."""

    exit_code: int = EXIT_INVALID_INPUT


@dataclass(eq=False)
class PolicyDenied(SandrunError):
    """Valid input that the policy refuses (exit code 3)."""

    exit_code: int = EXIT_POLICY_DENIED


@dataclass(eq=False)
class AuditError(SandrunError):
    """An audit log that fails verification (exit code 4)."""

    exit_code: int = EXIT_AUDIT_FAILED
