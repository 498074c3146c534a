"""The policy, parsed once into typed values the rules can use without re-reading YAML.

A policy file is loaded strictly (``runner.source``), validated against its schema, then turned
into a frozen :class:`Policy`: keys parsed, limits in bytes and milliseconds, roots resolved
against the compile root with symlinks followed, host patterns parsed. Anything that cannot be
parsed is an :class:`~runner.errors.InputError` naming the line in the policy file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.canonical import canonical_digest
from runner.errors import InputError, Violation
from runner.plan import ModuleLimits, NetLimits
from runner.source import Document
from runner.units import UnitError, parse_duration, parse_size

if TYPE_CHECKING:
    from runner.egress.rules import AllowEntry
    from runner.hosts import HostPattern
    from runner.signing import PublicKey

__all__ = [
    "TrustedKey",
    "LimitValues",
    "Policy",
    "policy_from_document",
    "LIMIT_FIELDS",
    "DEFAULT_MAX_ENGINES",
]

#: Distinct engine configurations (fuel on/off x stack) a plan may use when the policy sets none.
DEFAULT_MAX_ENGINES = 8

#: Limit field name in YAML -> (attribute in LimitValues, parser).
LIMIT_FIELDS: dict[str, tuple[str, Callable[[Any], int]]] = {
    "fuel": ("fuel", int),
    "memory": ("memory", parse_size),
    "timeout": ("timeout_ms", parse_duration),
    "stack": ("stack", parse_size),
    "output": ("output", parse_size),
    "disk": ("disk", parse_size),
}


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A signing key the policy trusts for tools, until ``not_after`` when set."""

    id: str
    public_key: PublicKey
    not_after: dt.date | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitValues:
    """A set of limits where each may be absent (None)."""

    fuel: int | None = None
    memory: int | None = None
    timeout_ms: int | None = None
    stack: int | None = None
    output: int | None = None
    disk: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A loaded policy: every field parsed and checked, paths resolved against the root."""

    document: Document
    name: str
    signatures_required: bool
    trusted_keys: dict[str, TrustedKey]
    revoked: frozenset[str]
    default_limits: LimitValues
    max_limits: LimitValues
    roots: tuple[Path, ...]
    write_roots: tuple[Path, ...]
    network_allow: tuple[HostPattern, ...]
    network_block: tuple[str, ...]
    network_entries: tuple[AllowEntry, ...] = ()  # network_allow with their methods and paths
    network_secrets: frozenset[tuple[tuple[str, str, int], str, str]] = frozenset()  # origin, header, env
    network_limits: NetLimits = NetLimits()  # defaults and caps of every job's sandrun:http bounds
    actions_allow: tuple[str, ...]
    actions_deny: tuple[str, ...]
    max_score: float | None
    modules: ModuleLimits = ModuleLimits()
    max_engines: int = DEFAULT_MAX_ENGINES
    hermetic_required: bool = False
    denied_features: frozenset[str] = frozenset()  # WebAssembly proposals modules may not use

    @property
    def path(self) -> str:
        return self.document.path


def parse_limits(
    document: Document, pointer: str, data: dict[str, Any], problems: list[Violation]
) -> LimitValues:
    """Parse a ``limits`` mapping; unparseable values become violations, not exceptions."""
    values: dict[str, int] = {}
    for field, (attribute, parser) in LIMIT_FIELDS.items():
        if field not in data:
            continue
        try:
            values[attribute] = parser(data[field])
        except (UnitError, TypeError, ValueError) as exc:
            problems.append(
                Violation("limits.invalid", f"{field}: {exc}", document.locate(f"{pointer}/{field}"))
            )
    return LimitValues(**values)


def _parse_modules(document: Document, data: dict[str, Any], problems: list[Violation]) -> ModuleLimits:
    """The policy's ``modules`` section; an absent field keeps :class:`ModuleLimits`' default."""
    values: dict[str, int] = {}
    for field, attribute, parser in (
        ("max_size", "max_size", parse_size),
        ("compile_timeout", "compile_timeout_ms", parse_duration),
        ("compile_memory", "compile_memory", parse_size),
    ):
        if field in data:
            try:
                values[attribute] = parser(data[field])
            except (UnitError, TypeError, ValueError) as exc:
                problems.append(
                    Violation("modules.invalid", f"{field}: {exc}", document.locate(f"/modules/{field}"))
                )
    return ModuleLimits(**values)


def _resolve_roots(
    document: Document, root: Path, pointer: str, texts: list[str], problems: list[Violation]
) -> tuple[Path, ...]:
    """Each folder relative to the compile root, symlinks followed; a symlink loop is a problem."""
    resolved: list[Path] = []
    for index, text in enumerate(texts):
        try:
            resolved.append((root / text).resolve())
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            problems.append(
                Violation(
                    "policy.root-invalid",
                    f"{text!r} cannot be resolved: {exc}",
                    document.locate(f"{pointer}/{index}"),
                )
            )
    return tuple(resolved)


def policy_from_document(document: Document, root: Path) -> Policy:
    """Build a :class:`Policy` from a schema-valid document, or raise ``InputError``."""
    data = document.data
    problems: list[Violation] = []
    signatures = data.get("signatures", {})
    if signatures.get("trusted_keys"):  # cryptography is imported only for a policy with keys
        from runner.signing import KeyFileError, parse_public_key, public_key_raw
    keys: dict[str, TrustedKey] = {}
    ids_by_material: dict[bytes, str] = {}
    for index, entry in enumerate(signatures.get("trusted_keys", [])):
        pointer = f"/signatures/trusted_keys/{index}"
        try:
            public_key = parse_public_key(entry["public_key"])
        except KeyFileError as exc:
            rule = exc.rule_id or "policy.key-invalid"
            problems.append(Violation(rule, str(exc), document.locate(pointer + "/public_key")))
            continue
        # Raw bytes are canonical (parse_public_key refuses other encodings): same bytes, same key.
        first_id = ids_by_material.setdefault(public_key_raw(public_key), entry["id"])
        if first_id != entry["id"]:
            problems.append(
                Violation(
                    "key.duplicate-material",
                    f"key {entry['id']!r} is the same key as {first_id!r}: revoking or expiring one id "
                    "would leave the other trusted",
                    document.locate(pointer + "/public_key"),
                )
            )
        not_after = None
        if "not_after" in entry:
            try:
                not_after = dt.date.fromisoformat(entry["not_after"])
            except ValueError:
                problems.append(
                    Violation(
                        "policy.key-invalid",
                        "not_after must be a date YYYY-MM-DD",
                        document.locate(pointer + "/not_after"),
                    )
                )
        if entry["id"] in keys:
            problems.append(
                Violation(
                    "policy.key-duplicate", f"key id {entry['id']!r} listed twice", document.locate(pointer)
                )
            )
        keys[entry["id"]] = TrustedKey(entry["id"], public_key, not_after)
    _refuse_ids_differing_in_case(document, signatures, problems)

    limits = data.get("limits", {})
    default_limits = parse_limits(document, "/limits/default", limits.get("default", {}), problems)
    max_limits = parse_limits(document, "/limits/max", limits.get("max", {}), problems)

    network = data.get("network", {})
    # each parser is imported only for a policy that uses it (the default one only blocks)
    if network.get("allow") or network.get("block"):
        from runner.hosts import HostPatternError, parse_block_entry
    if network.get("allow"):
        from runner.egress.rules import AllowEntry
    if network.get("secrets"):
        from runner.egress.urls import UrlError
    entries: list[AllowEntry] = []
    for index, text in enumerate(network.get("allow", [])):
        try:
            entries.append(AllowEntry.parse(text))
        except HostPatternError as exc:
            problems.append(
                Violation("network.pattern", str(exc), document.locate(f"/network/allow/{index}"))
            )
    for index, text in enumerate(network.get("block", [])):
        try:
            parse_block_entry(text)
        except HostPatternError as exc:
            problems.append(
                Violation("network.pattern", str(exc), document.locate(f"/network/block/{index}"))
            )

    secrets = set()
    for index, entry in enumerate(network.get("secrets", [])):
        try:
            secrets.add(secret_key(entry))
        except UrlError as exc:
            where = document.locate(f"/network/secrets/{index}/origin")
            problems.append(Violation("network.secret", exc.message, where))

    net_limits = parse_net_limits(
        document, "/network/limits", network.get("limits", {}), NetLimits(), problems
    )

    modules = _parse_modules(document, data.get("modules", {}), problems)
    denied_features = _denied_features(document, data.get("modules", {}), problems)

    fs = data.get("fs", {})
    roots = _resolve_roots(document, root, "/fs/roots", fs.get("roots", []), problems)
    write = fs.get("write", False)
    if write is True:
        write_roots = roots
    elif write is False:
        write_roots = ()
    else:
        write_roots = _resolve_roots(document, root, "/fs/write", write, problems)
    if problems:
        raise InputError(violations=tuple(problems))
    actions = data.get("actions", {})
    governance = data.get("governance", {})
    return Policy(
        document=document,
        name=data["metadata"]["name"],
        signatures_required=bool(signatures.get("required", False)),
        trusted_keys=keys,
        revoked=frozenset(canonical_digest(entry) or entry for entry in signatures.get("revoked", [])),
        default_limits=default_limits,
        max_limits=max_limits,
        roots=roots,
        write_roots=write_roots,
        network_allow=tuple(entry.pattern for entry in entries),
        network_block=tuple(network.get("block", [])),
        network_entries=tuple(entries),
        network_secrets=frozenset(secrets),
        network_limits=net_limits,
        actions_allow=tuple(actions.get("allow", [])),
        actions_deny=tuple(actions.get("deny", [])),
        max_score=governance.get("max_score"),
        modules=modules,
        max_engines=data.get("modules", {}).get("max_engines", DEFAULT_MAX_ENGINES),
        hermetic_required=bool(data.get("hermetic", {}).get("required", False)),
        denied_features=denied_features,
    )


def _refuse_ids_differing_in_case(
    document: Document, signatures: dict[str, Any], problems: list[Violation]
) -> None:
    """Key ids are compared exactly, so an id that differs from a trusted one only in case is
    refused: ``revoked: [Examples-2026]`` would revoke nothing while the reviewer reads the key
    ``examples-2026`` as revoked (and two trusted ids ``k``/``K`` invite that very mistake)."""
    seen: dict[str, str] = {}
    for index, entry in enumerate(signatures.get("trusted_keys", [])):
        first = seen.setdefault(entry["id"].casefold(), entry["id"])
        if first != entry["id"]:
            message = f"key id {entry['id']!r} differs from the trusted key id {first!r} only in case"
            where = document.locate(f"/signatures/trusted_keys/{index}/id")
            problems.append(Violation("policy.key-case", message, where))
    for index, text in enumerate(signatures.get("revoked", [])):
        trusted = seen.get(text.casefold())
        if trusted is not None and trusted != text and canonical_digest(text) is None:
            message = (
                f"revoked key id {text!r} differs from the trusted key id {trusted!r} only in case: "
                "key ids are compared exactly, so it would revoke nothing; write it as it is trusted"
            )
            where = document.locate(f"/signatures/revoked/{index}")
            problems.append(Violation("policy.key-case", message, where))


def secret_key(entry: dict[str, Any]) -> tuple[tuple[str, str, int], str, str]:
    """What must match between a job's secret and the policy's: origin, header (any case), variable.

    Raises :class:`~runner.egress.urls.UrlError` for an origin that is not ``http(s)://host[:port]``.
    """
    from runner.egress.urls import UrlError, parse_url

    url = parse_url(entry["origin"])
    if url.target != "/" or entry["origin"].rstrip("/").count("/") > 2:
        raise UrlError("url.path", f"an origin is scheme://host[:port], without a path: {entry['origin']!r}")
    return url.origin, entry["header"].lower(), entry["value_from"]["env"]


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, not {value!r}")
    return value


_NET_LIMITS: dict[str, tuple[str, Callable[[object], int]]] = {
    "timeout": ("timeout_ms", parse_duration),
    "body": ("body", parse_size),
    "requests": ("requests", _count),
    "handles": ("handles", _count),
}


def parse_net_limits(
    document: Document, pointer: str, data: dict[str, Any], caps: NetLimits, problems: list[Violation]
) -> NetLimits:
    """``network.limits`` over ``caps``: each value given must not exceed its cap (rule
    ``network.limits``); a value not given is the cap itself."""
    values: dict[str, int] = {}
    for key, (name, parse) in _NET_LIMITS.items():
        if key not in data:
            continue
        try:
            value = parse(data[key])
        except (UnitError, ValueError, TypeError) as exc:
            problems.append(Violation("network.limits", str(exc), document.locate(f"{pointer}/{key}")))
            continue
        cap = getattr(caps, name)
        if value <= 0 or value > cap:
            where = document.locate(f"{pointer}/{key}")
            problems.append(
                Violation("network.limits", f"{key} must be 1..{cap} ({data[key]!r} given)", where)
            )
            continue
        values[name] = value
    return replace(caps, **values)


def _denied_features(
    document: Document, modules: dict[str, Any], problems: list[Violation]
) -> frozenset[str]:
    """``modules.wasm_features``: ``false`` denies a proposal the engine enables; ``true`` keeps one,
    and is refused for a proposal the engine does not enable (the policy would promise what it is not)."""
    from runner.features import ENGINE_FEATURES

    denied = set()
    for name, allowed in modules.get("wasm_features", {}).items():
        if not allowed:
            denied.add(name)
        elif not ENGINE_FEATURES[name]:
            problems.append(
                Violation(
                    "policy.wasm-feature-unsupported",
                    f"the engine does not enable the WebAssembly proposal {name!r}; a policy can only deny "
                    "proposals (docs/sandbox.md lists the enabled ones)",
                    document.locate(f"/modules/wasm_features/{name}"),
                )
            )
    return frozenset(denied)
