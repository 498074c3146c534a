"""Policy containment: does everything a candidate policy allows, a ceiling policy allow too?

``sandrun policy prove CANDIDATE --boundary CEILING`` answers per capability, exactly, by the
compiler's own semantics rather than by comparing text: host patterns through
:func:`runner.hosts.covers`, gate actions as regular languages (the glob automata run in product
with the action-name grammar), paths after resolution, signatures key by key. Each difference is a
:class:`Finding` with a counterexample, a manifest the candidate allows and the ceiling denies
(with the module, signature or date it needs named as placeholders), or, for grants that act at run
time only (address blocks, compile bounds), the connection or module that tells them apart.

A part the prover cannot decide exactly (a policy field it does not know, a network entry of
another shape, a governance score outside its search) is ``unsupported``, never "contained".
``sandrun policy diff OLD NEW`` runs the prover both ways: what NEW widens, what it narrows.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.hosts import IPNetwork, parse_block_entry
from runner.policy.compiler import BUILTIN_LIMITS
from runner.policy.governance import Grants, score
from runner.policy.model import LIMIT_FIELDS, Policy
from runner.signing import public_key_raw
from runner.units import format_duration, format_size

__all__ = [
    "MODULE",
    "SHA256",
    "SIGNATURE",
    "INVALID_SIGNATURE",
    "Finding",
    "prove",
    "outcome",
]

#: Placeholders in counterexamples: any module file, its sha256, a valid signature of it.
MODULE = "tool.wasm"
SHA256 = "<sha256 of tool.wasm>"
SIGNATURE = "<signature of tool.wasm by this key>"
#: A well-formed signature that verifies for nothing: the ceiling checks it, the candidate may not.
INVALID_SIGNATURE = base64.b64encode(bytes(64)).decode("ascii")

#: Policy fields the prover understands; any other makes the proof ``unsupported``.
_KNOWN = {
    "": {
        "apiVersion",
        "kind",
        "metadata",
        "signatures",
        "limits",
        "fs",
        "network",
        "actions",
        "governance",
        "modules",
    },
    "signatures": {"required", "trusted_keys", "revoked"},
    "limits": {"default", "max"},
    "fs": {"roots", "write"},
    "network": {"allow", "block"},
    "actions": {"allow", "deny"},
    "governance": {"max_score"},
    "modules": {"max_size", "compile_timeout", "compile_memory", "max_engines"},
}
_STATE_BOUND = 200_000

Verdict = Literal["not-contained", "unsupported"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One capability the candidate grants beyond the ceiling (or that cannot be decided).

    ``manifest`` is a whole manifest (paths relative to the root, the manifest placed there) that
    the candidate allows and the ceiling denies, compiled ``on`` that date when one is given;
    ``runtime`` describes a difference compile time cannot show (a connection, a module).
    """

    area: str
    verdict: Verdict
    reason: str
    manifest: dict[str, Any] | None = None
    runtime: str | None = None
    on: dt.date | None = None
    needs: tuple[str, ...] = field(default_factory=tuple)


def outcome(findings: Iterable[Finding]) -> Literal["contained", "not-contained", "unsupported"]:
    """A definite counterexample wins over an undecided part."""
    verdicts = {f.verdict for f in findings}
    if "not-contained" in verdicts:
        return "not-contained"
    return "unsupported" if verdicts else "contained"


def _manifest(jobs: list[dict[str, Any]], tool: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "sandrun/v1",
        "kind": "Manifest",
        "metadata": {"name": "counterexample"},
        "tools": {"t": {"module": MODULE, "sha256": SHA256, **(tool or {})}},
        "jobs": [{"tool": "t", **job} for job in jobs],
    }


def _job(**spec: Any) -> dict[str, Any]:
    return {"name": "j", **spec}


# -- unknown shapes ---------------------------------------------------------------------------


def _unsupported(policy: Policy, role: str) -> Iterator[Finding]:
    data = policy.document.data
    for section, known in _KNOWN.items():
        value = data if not section else data.get(section, {})
        if not isinstance(value, dict):
            continue
        for key in sorted(set(value) - known):
            where = f"{section}.{key}" if section else key
            yield Finding(
                area=where,
                verdict="unsupported",
                reason=f"the {role} sets {where}, which the prover does not know",
            )
    for pattern in (*policy.actions_allow, *policy.actions_deny):
        if "?" in pattern or "[" in pattern:
            yield Finding(
                area="actions",
                verdict="unsupported",
                reason=f"the {role}'s action pattern {pattern!r} uses a wildcard other than *",
            )
    for index, entry in enumerate(data.get("network", {}).get("allow", [])):
        if not isinstance(entry, str):
            yield Finding(
                area="network.allow",
                verdict="unsupported",
                reason=f"the {role}'s network.allow entry {index} is not a host pattern string",
            )


# -- limits -----------------------------------------------------------------------------------


def _shown(field_name: str, value: int) -> str | int:
    """A limit as a manifest can write it exactly: sizes in bytes, durations in milliseconds."""
    return f"{value}ms" if field_name == "timeout" else value


def _effective_default(policy: Policy, attribute: str) -> int | None:
    for source in (policy.default_limits, BUILTIN_LIMITS):
        value = getattr(source, attribute)
        if value is not None:
            return int(value)
    cap = getattr(policy.max_limits, attribute)
    return None if cap is None else int(cap)


def _allows_value(policy: Policy, attribute: str, value: int | None) -> bool:
    cap = getattr(policy.max_limits, attribute)
    return value is None or cap is None or value <= cap


def _limits(candidate: Policy, ceiling: Policy) -> Iterator[Finding]:
    for field_name, (attribute, _parse) in LIMIT_FIELDS.items():
        a_cap, b_cap = getattr(candidate.max_limits, attribute), getattr(ceiling.max_limits, attribute)
        if b_cap is not None and (a_cap is None or a_cap > b_cap):
            value = b_cap + 1
            yield Finding(
                area=f"limits.{field_name}",
                verdict="not-contained",
                reason=f"the candidate allows {field_name} up to {_cap(field_name, a_cap)}, "
                f"the ceiling only up to {_cap(field_name, b_cap)}",
                manifest=_manifest([_job(limits={field_name: _shown(field_name, value)})]),
            )
            continue
        # A job that omits the limit gets each policy's default; each denies it above its own cap.
        a_default = _effective_default(candidate, attribute)
        b_default = _effective_default(ceiling, attribute)
        if _allows_value(candidate, attribute, a_default) and not _allows_value(
            ceiling, attribute, b_default
        ):
            yield Finding(
                area=f"limits.{field_name}",
                verdict="not-contained",
                reason=f"a job without limits.{field_name} gets the ceiling's default, above its own maximum",
                manifest=_manifest([_job()]),
            )


def _cap(field_name: str, value: int | None) -> str:
    if value is None:
        return "no maximum"
    if field_name == "fuel":
        return str(value)
    return format_duration(value) if field_name == "timeout" else format_size(value)


# -- filesystem -------------------------------------------------------------------------------


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _reachable(roots: Iterable[Path], root: Path) -> list[Path]:
    """Roots as mounts can use them: a mount must also resolve inside the compile root."""
    found = []
    for path in roots:
        if _inside(path, [root]):
            found.append(path)
        elif _inside(root, [path]):
            found.append(root)
    return found


def _relative(path: Path, root: Path) -> str:
    text = path.relative_to(root).as_posix()
    return "./" + text if text != "." else "."


def _fs(candidate: Policy, ceiling: Policy, root: Path) -> Iterator[Finding]:
    b_any = ceiling.roots + ceiling.write_roots
    for path in _reachable(candidate.roots + candidate.write_roots, root):
        if not _inside(path, b_any):
            yield Finding(
                area="fs.roots",
                verdict="not-contained",
                reason=f"{_relative(path, root)} is inside a candidate root and outside every ceiling root",
                manifest=_manifest(
                    [_job(fs=[{"host": _relative(path, root), "guest": "/data", "mode": "ro"}])]
                ),
                needs=(f"the folder {_relative(path, root)} exists",),
            )
    for path in _reachable(candidate.write_roots, root):
        if _inside(path, b_any) and not _inside(path, ceiling.write_roots):
            yield Finding(
                area="fs.write",
                verdict="not-contained",
                reason=f"the candidate allows writing {_relative(path, root)}, the ceiling does not",
                manifest=_manifest(
                    [_job(fs=[{"host": _relative(path, root), "guest": "/data", "mode": "rw"}])]
                ),
                needs=(f"the folder {_relative(path, root)} exists",),
            )


# -- network ----------------------------------------------------------------------------------


def _network(candidate: Policy, ceiling: Policy) -> Iterator[Finding]:
    from runner.hosts import covers

    for pattern in candidate.network_allow:
        if not any(covers(outer, pattern) for outer in ceiling.network_allow):
            yield Finding(
                area="network.allow",
                verdict="not-contained",
                reason=f"{pattern.text!r} is allowed by the candidate and covered by no ceiling entry",
                manifest=_manifest([_job(network={"allow": [pattern.text]})]),
            )
    a_blocked = [n for entry in candidate.network_block for n in parse_block_entry(entry)]
    for entry in ceiling.network_block:
        for network in parse_block_entry(entry):
            left = _uncovered(network, a_blocked)
            if left is not None:
                yield Finding(
                    area="network.block",
                    verdict="not-contained",
                    reason=f"the ceiling blocks {entry!r}; the candidate lets jobs reach {left}",
                    runtime=f"a connection to {left} (any allowed host resolving to it)",
                )
                break


def _uncovered(network: IPNetwork, blocked: list[IPNetwork]) -> str | None:
    """An address of ``network`` in none of ``blocked``, or None."""
    pieces: list[IPNetwork] = [network]
    for other in blocked:
        if other.version != network.version:
            continue
        next_pieces: list[IPNetwork] = []
        for piece in pieces:
            if piece.subnet_of(other):  # type: ignore[arg-type]
                continue
            if other.subnet_of(piece):  # type: ignore[arg-type]
                next_pieces.extend(piece.address_exclude(other))  # type: ignore[arg-type]
            else:
                next_pieces.append(piece)
        pieces = next_pieces
    return str(pieces[0].network_address) if pieces else None


# -- gate actions -----------------------------------------------------------------------------

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_ALPHABET = _LOWER + "0123456789_-."


def _grammar(state: int, char: str) -> int | None:
    """The action-name grammar ``[a-z][a-z0-9_-]*(\\.[a-z][a-z0-9_-]*)*`` as a DFA (1 accepts)."""
    if state in (0, 2):
        return 1 if char in _LOWER else None
    if char == ".":
        return 2
    return 1


class _Glob:
    """An action pattern as an NFA over its characters: ``*`` matches any run, anything else itself.
    (The policy schema allows only ``*`` as a wildcard; ``_unsupported`` refuses ``?`` and ``[``.)"""

    def __init__(self, pattern: str) -> None:
        self.tokens = pattern

    def closure(self, positions: Iterable[int]) -> frozenset[int]:
        found = set(positions)
        for position in sorted(found):
            while position < len(self.tokens) and self.tokens[position] == "*":
                position += 1
                found.add(position)
        return frozenset(found)

    def step(self, positions: frozenset[int], char: str) -> frozenset[int]:
        moved = set()
        for position in positions:
            if position == len(self.tokens):
                continue
            token = self.tokens[position]
            if token == "*":
                moved.add(position)
            elif token == char:
                moved.add(position + 1)
        return self.closure(moved)

    def accepts(self, positions: frozenset[int]) -> bool:
        return len(self.tokens) in positions


def _action_counterexample(candidate: Policy, ceiling: Policy) -> str | None | Literal[False]:
    """The shortest action name the candidate allows and the ceiling denies; None if none;
    False when the search exceeded its bound (undecided)."""
    groups = [
        [_Glob(p) for p in candidate.actions_allow],
        [_Glob(p) for p in candidate.actions_deny],
        [_Glob(p) for p in ceiling.actions_allow],
        [_Glob(p) for p in ceiling.actions_deny],
    ]
    start = (0, tuple(tuple(g.closure([0]) for g in group) for group in groups))
    parents: dict[Any, tuple[Any, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        grammar, sets = state
        hits = [
            any(g.accepts(s) for g, s in zip(group, group_sets, strict=True))
            for group, group_sets in zip(groups, sets, strict=True)
        ]
        if grammar == 1 and hits[0] and not hits[1] and (not hits[2] or hits[3]):
            chars = []
            while parents[state] is not None:
                state, char = parents[state]  # type: ignore[misc]
                chars.append(char)
            return "".join(reversed(chars))
        for char in _ALPHABET:
            moved = _grammar(grammar, char)
            if moved is None:
                continue
            following = (
                moved,
                tuple(
                    tuple(g.step(s, char) for g, s in zip(group, group_sets, strict=True))
                    for group, group_sets in zip(groups, sets, strict=True)
                ),
            )
            if following not in parents:
                if len(parents) >= _STATE_BOUND:
                    return False
                parents[following] = (state, char)
                queue.append(following)
    return None


def _actions(candidate: Policy, ceiling: Policy) -> Iterator[Finding]:
    action = _action_counterexample(candidate, ceiling)
    if action is False:
        yield Finding(
            area="actions", verdict="unsupported", reason="the action patterns are too large to compare"
        )
    elif action is not None:
        yield Finding(
            area="actions",
            verdict="not-contained",
            reason=f"gate action {action!r} is allowed by the candidate and not by the ceiling",
            manifest=_manifest([_job()], {"actions": [action]}),
        )


# -- signatures -------------------------------------------------------------------------------


def _signatures(candidate: Policy, ceiling: Policy) -> Iterator[Finding]:
    if ceiling.signatures_required and not candidate.signatures_required:
        yield Finding(
            area="signatures.required",
            verdict="not-contained",
            reason="the ceiling requires signed modules, the candidate does not",
            manifest=_manifest([_job()]),
        )
    for key_id, key in sorted(candidate.trusted_keys.items()):
        if key_id in candidate.revoked:
            continue
        other = ceiling.trusted_keys.get(key_id)
        on = key.not_after
        why = None
        if other is None:
            why = None if not ceiling.signatures_required else f"key {key_id!r} is not trusted by the ceiling"
        elif public_key_raw(other.public_key) != public_key_raw(key.public_key):
            why = f"the ceiling's key {key_id!r} is another key"
        elif key_id in ceiling.revoked:
            why = f"the ceiling revokes key {key_id!r}"
        elif other.not_after is not None and (key.not_after is None or key.not_after > other.not_after):
            on = other.not_after + dt.timedelta(days=1)
            why = f"the ceiling trusts key {key_id!r} until {other.not_after}, the candidate longer"
        if why is not None:
            yield Finding(
                area="signatures.trusted_keys",
                verdict="not-contained",
                reason=why,
                manifest=_manifest([_job()], {"signature": {"key": key_id, "sig": SIGNATURE}}),
                on=on,
                needs=(f"a signature of the module by the candidate's key {key_id!r}",),
            )
    if not candidate.signatures_required:
        for key_id in sorted(set(ceiling.trusted_keys) - set(candidate.trusted_keys)):
            # The candidate reads a signature by a key it does not know as no signature at all.
            yield Finding(
                area="signatures.trusted_keys",
                verdict="not-contained",
                reason=f"the ceiling checks signatures by key {key_id!r}; the candidate ignores them",
                manifest=_manifest([_job()], {"signature": {"key": key_id, "sig": INVALID_SIGNATURE}}),
            )
    for digest in sorted(d for d in ceiling.revoked - candidate.revoked if len(d) == 64):
        yield Finding(
            area="signatures.revoked",
            verdict="not-contained",
            reason=f"the ceiling revokes module sha256 {digest}, the candidate does not",
            manifest=_manifest([_job()]),
            needs=(f"a module whose sha256 is {digest}",),
        )


# -- modules ----------------------------------------------------------------------------------


def _modules(candidate: Policy, ceiling: Policy) -> Iterator[Finding]:
    a, b = candidate.modules, ceiling.modules
    if a.max_size > b.max_size:
        yield Finding(
            area="modules.max_size",
            verdict="not-contained",
            reason=f"the candidate allows modules up to {format_size(a.max_size)}, "
            f"the ceiling {format_size(b.max_size)}",
            manifest=_manifest([_job()]),
            needs=(f"a module of {b.max_size + 1} bytes",),
        )
    for name, attribute, shown in (
        ("compile_timeout", "compile_timeout_ms", format_duration),
        ("compile_memory", "compile_memory", format_size),
    ):
        if getattr(a, attribute) > getattr(b, attribute):
            yield Finding(
                area=f"modules.{name}",
                verdict="not-contained",
                reason=f"the candidate lets a compilation use {shown(getattr(a, attribute))}, "
                f"the ceiling {shown(getattr(b, attribute))}",
                runtime=f"a module whose compilation needs more than {shown(getattr(b, attribute))}",
            )
    if candidate.max_engines > ceiling.max_engines:
        stacks = [(64 + 4 * i) << 10 for i in range(ceiling.max_engines + 1)]
        yield Finding(
            area="modules.max_engines",
            verdict="not-contained",
            reason=f"the candidate allows {candidate.max_engines} engine configurations, "
            f"the ceiling {ceiling.max_engines}",
            manifest=_manifest(
                [{"name": f"j{i}", "limits": {"stack": format_size(s)}} for i, s in enumerate(stacks)]
            ),
        )


# -- governance -------------------------------------------------------------------------------


def _governance(candidate: Policy, ceiling: Policy, root: Path) -> Iterator[Finding]:
    """A job scoring above the ceiling's max_score and within the candidate's, found by search over
    mounts and env vars (the grants every policy with roots allows; scores grow with each)."""
    a, b = candidate.max_score, ceiling.max_score
    if b is None or (a is not None and a <= b):
        return
    writable = _reachable(candidate.write_roots, root)
    readable = _reachable(candidate.roots + candidate.write_roots, root)
    signed = candidate.signatures_required  # then the counterexample's tool must be signed
    for ro in range(11 if readable else 1):
        for rw in range(5 if writable else 1):
            for env in range(51):
                grants = Grants(
                    ro_mounts=ro, rw_mounts=rw, network=False, env_vars=env, signed=signed, actions=()
                )
                value = score(grants)
                if value <= b:
                    continue
                if a is not None and value > a:
                    break
                mounts = [
                    {"host": _relative(readable[0], root), "guest": f"/r{i}", "mode": "ro"} for i in range(ro)
                ]
                mounts += [
                    {"host": _relative(writable[0], root), "guest": f"/w{i}", "mode": "rw"} for i in range(rw)
                ]
                job = _job(env={f"V{i}": "x" for i in range(env)}, **({"fs": mounts} if mounts else {}))
                yield Finding(
                    area="governance.max_score",
                    verdict="not-contained",
                    reason=f"a job scoring {value} is within the candidate's max_score {a}, "
                    f"over the ceiling's {b}",
                    manifest=_manifest([job]),
                    needs=("a signature of the module by a key both trust",) if signed else (),
                )
                return
    yield Finding(
        area="governance.max_score",
        verdict="unsupported",
        reason=f"the candidate's max_score {a} is above the ceiling's {b}, and the prover found no job "
        "the candidate allows in between (its search covers mounts and env vars only)",
    )


def prove(candidate: Policy, ceiling: Policy, root: Path) -> list[Finding]:
    """Every way ``candidate`` allows more than ``ceiling``; empty means contained."""
    root = root.resolve()
    findings = [*_unsupported(candidate, "candidate"), *_unsupported(ceiling, "ceiling")]
    findings += _limits(candidate, ceiling)
    findings += _fs(candidate, ceiling, root)
    findings += _network(candidate, ceiling)
    findings += _actions(candidate, ceiling)
    findings += _signatures(candidate, ceiling)
    findings += _modules(candidate, ceiling)
    findings += _governance(candidate, ceiling, root)
    return findings
