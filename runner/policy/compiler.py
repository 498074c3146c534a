"""The policy compiler: manifests + one policy -> a :class:`~runner.plan.Plan`, or every denial.

Like an admission controller, it never stops at the first problem: each check adds a denial
(rule id, message, JSON Pointer, file and line) and compilation goes on, so one run reports all of
them. Checks run in DESIGN.md's order for each tool, then each job; a job whose tool was denied is
still checked on its own grants. The compiler never runs WASM, never writes anything and never
starts a program (the policy's git commit is read from the repository's files: see ``gitstate``).

Rule ids are stable; ``docs/policy.md`` lists them all.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import graphlib
import hashlib
import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runner import catalog
from runner.canonical import canonical_digest
from runner.errors import SandrunError, Violation, error_for
from runner.features import enabled
from runner.plan import (
    DEFAULT_DISK,
    MAX_WASM_STACK,
    Hermetic,
    HttpRule,
    InputFile,
    JobSpec,
    Limits,
    Mount,
    Network,
    Plan,
    PolicyRef,
    SecretRef,
    Tool,
    is_invoke_call,
    work_dir_mount,
)
from runner.policy.gitstate import policy_commit
from runner.policy.governance import Grants, score
from runner.policy.model import LimitValues, Policy, parse_limits, parse_net_limits, secret_key
from runner.source import Document
from runner.units import format_duration, format_size
from runner.wasmfile import WasmKind, core_modules, not_wasm_reason, wasm_kind
from runner.wasmsig import WasmSignatureError, embedded_signers, has_signature_section

if TYPE_CHECKING:  # network and hermetic helpers are imported by the checks that use them
    from runner.egress.rules import AllowEntry
    from runner.hosts import CoverIndex

__all__ = ["BUILTIN_LIMITS", "compile_plan", "denial_error"]

#: Limits used when neither the manifest nor the policy's ``limits.default`` sets one.
BUILTIN_LIMITS = LimitValues(
    fuel=None, memory=64 << 20, timeout_ms=30_000, stack=512 << 10, output=1 << 20, disk=DEFAULT_DISK
)


@dataclass
class _Compilation:
    """State of one compile: the root, the policy, and every denial found so far."""

    root: Path
    policy: Policy
    today: dt.date
    violations: list[Violation] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)  # route -> "file:line" of the job serving it
    engines: dict[tuple[bool, int], str] = field(default_factory=dict)  # configuration -> first job
    named_module: Path | None = None  # ``sandrun exec``'s module: the user's own choice, root or not
    #: Each module file's sha256 and bytes, read once however many tools name it (symlinks too).
    modules: dict[Path, tuple[str, bytes]] = field(default_factory=dict)
    #: Why a module's bytes fail the policy's wasm_features (None: they pass), by sha256.
    feature_refusals: dict[str, str | None] = field(default_factory=dict)

    def deny(
        self,
        document: Document,
        rule_id: str,
        message: str,
        pointer: str,
        *,
        at_key: bool = False,
        expected: Any = None,
        actual: Any = None,
    ) -> None:
        location = document.locate_key(pointer) if at_key else document.locate(pointer)
        self.violations.append(Violation(rule_id, message, location, expected, actual))

    @functools.cached_property
    def network_allow(self) -> CoverIndex:
        """The policy's plain (not narrowed) network.allow entries, indexed once: each job entry
        is checked against a few."""
        from runner.hosts import CoverIndex

        return CoverIndex(
            e.pattern for e in self.policy.network_entries if e.methods is None and e.paths is None
        )

    def covers(self, inner: AllowEntry) -> bool:
        """Does one policy allow entry admit everything ``inner`` admits (methods and paths too)?"""
        if self.network_allow.covers(inner.pattern):
            return True
        narrowed = (e for e in self.policy.network_entries if e.methods is not None or e.paths is not None)
        return any(inner.covered_by(outer) for outer in narrowed)

    def relative(self, path: Path) -> str:
        """``path`` relative to the root, POSIX separators; the plan stores nothing absolute."""
        text = path.relative_to(self.root).as_posix()
        return text if text else "."

    def inside_root(self, path: Path) -> bool:
        return path == self.root or self.root in path.parents

    def input_key(self, path: Path) -> str:
        """How the plan names an input file: relative to the root when inside it."""
        return self.relative(path) if self.inside_root(path) else str(path)

    def record_input(self, path: Path, digest: str) -> None:
        self.inputs[self.input_key(path)] = digest


def _shown(field_name: str, value: int) -> str:
    """A limit as people write it: sizes in KiB/MiB, durations in s/m, fuel as a number."""
    if field_name == "timeout":
        return format_duration(value)
    return str(value) if field_name == "fuel" else format_size(value)


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _root_hint(path: Path, root: Path) -> str:
    """Run from a subfolder, the root (the current folder) is too narrow: name the flag that fixes it."""
    common = Path(os.path.commonpath([path, root]))
    if root != Path.cwd().resolve() or common == Path(common.anchor):
        return ""
    return f" (the root is the current folder; run from {common} or pass --root {common})"


@functools.lru_cache(maxsize=8)
def _glob_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a string matches any of the ``fnmatch`` patterns: one regex for all of them, built
    once per policy, so an action is one match however many patterns the policy lists."""
    if not patterns:
        return lambda _text: False
    match = re.compile("|".join(fnmatch.translate(p) for p in patterns)).match
    return lambda text: match(text) is not None


def _builtin_effects(tool: Tool | None) -> tuple[tuple[str, float], ...]:
    builtin = catalog.lookup(tool.module) if tool is not None else None
    return builtin.effects if builtin is not None else ()


def _action_allowed(policy: Policy, action: str) -> str | None:
    """None when allowed; otherwise the rule id (deny wins over allow)."""
    if _glob_matcher(policy.actions_deny)(action):
        return "actions.denied"
    if not _glob_matcher(policy.actions_allow)(action):
        return "actions.not-allowed"
    return None


class _ManifestCompiler:
    """Checks one manifest document, adding denials to the shared compilation."""

    def __init__(self, state: _Compilation, document: Document) -> None:
        self.state = state
        self.document = document
        self.data = document.data
        self.name: str = self.data["metadata"]["name"]
        self.directory = Path(document.path).resolve().parent
        self.tools: dict[str, Tool | None] = {}

    def deny(self, rule_id: str, message: str, pointer: str, **kwargs: Any) -> None:
        self.state.deny(self.document, rule_id, message, pointer, **kwargs)

    # -- paths -------------------------------------------------------------------------------
    def resolve(self, text: str, pointer: str, what: str) -> Path | None:
        """Resolve a manifest-relative path with symlinks followed; it must exist inside the root."""
        try:
            path = (self.directory / text).resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            self.deny(f"{what}.missing", f"{text!r} does not exist", pointer)
            return None
        except (OSError, RuntimeError) as exc:  # symlink loops, permissions
            self.deny(f"{what}.missing", f"{text!r} cannot be resolved: {exc}", pointer)
            return None
        if not self.state.inside_root(path):
            root = self.state.root
            self.deny(
                f"{what}.outside-root",
                f"{text!r} resolves to {path}, outside the root {root}{_root_hint(path, root)}",
                pointer,
            )
            return None
        if "\\" in self.state.relative(path):
            self.deny(
                "path.backslash",
                f"{text!r} resolves to {self.state.relative(path)!r}: a plan names files with '/' only, "
                "so a backslash in a file or folder name under the root cannot be carried; rename it",
                pointer,
            )
            return None
        return path

    def resolve_module(self, text: str, pointer: str) -> Path | None:
        """A tool's module: inside the root, unless it is the one a user named on the command line
        (``sandrun exec``), which may be anywhere; the plan pins its digest either way."""
        named = self.state.named_module
        if named is not None and (self.directory / text).resolve() == named:
            return named
        return self.resolve(text, pointer, "tool.module")

    def check_features(self, digest: str, data: bytes, pointer: str) -> bool:
        """Rule ``tool.module.wasm-feature``: the module validates with only the proposals the
        policy leaves on; for a component, each core module it embeds does. (A module invalid even
        with all of the engine's is left to the run.) Validated once per digest."""
        refusals = self.state.feature_refusals
        if digest not in refusals:
            refusals[digest] = self.feature_refusal(data)
        refused = refusals[digest]
        if refused is None:
            return True
        self.deny(
            "tool.module.wasm-feature",
            f"the module needs a WebAssembly proposal the policy denies "
            f"({', '.join(sorted(self.state.policy.denied_features))}): {refused}",
            pointer,
        )
        return False

    def feature_refusal(self, data: bytes) -> str | None:
        """Why ``data`` fails to validate with the policy's proposals only, where it validates with
        all of the engine's; None when it passes (or is invalid either way)."""
        from wasmtime import Config, Engine, Module, WasmtimeError

        from runner.features import ENGINE_FEATURES

        malformed: str | None = None
        try:
            modules = list(core_modules(data)) if wasm_kind(data) == "component" else [data]
        except ValueError as exc:
            modules, malformed = [], str(exc)

        def problem(denied: frozenset[str]) -> str | None:
            if malformed is not None:
                return malformed
            config = Config()
            for name, on in ENGINE_FEATURES.items():
                setattr(config, f"wasm_{name}", on and name not in denied)
            engine = Engine(config)
            try:
                for module in modules:
                    Module.validate(engine, module)
            except WasmtimeError as exc:
                return str(exc).splitlines()[0]
            return None

        refused = problem(self.state.policy.denied_features)
        if refused is None or problem(frozenset()) is not None:
            return None
        return refused

    # -- tools -------------------------------------------------------------------------------
    def check_tools(self) -> None:
        for name, spec in self.data.get("tools", {}).items():
            self.tools[name] = self.check_tool(name, spec)

    def check_tool(self, name: str, spec: dict[str, Any]) -> Tool | None:
        pointer = f"/tools/{name}"
        policy = self.state.policy
        ok = True
        module_text: str = spec["module"]
        builtin = None
        if module_text.startswith(catalog.PREFIX):
            builtin = self.builtin_module(module_text, pointer + "/module")
            if builtin is None:
                return None
            module, digest, data = builtin.module, builtin.sha256, None
            kind: WasmKind = "module"  # the catalog ships core modules
        else:
            found = self.module_file(module_text, pointer + "/module")
            if found is None:
                return None
            module, digest, data = found
            kind = wasm_kind(data) or "module"  # module_file refused anything that is neither
        if (
            data is not None
            and policy.denied_features
            and not self.check_features(digest, data, pointer + "/module")
        ):
            ok = False
        if spec.get("sha256") is not None and digest != canonical_digest(spec["sha256"]):
            self.deny(
                "tool.digest",
                f"module bytes have sha256 {digest}, the manifest says {spec['sha256']}",
                pointer + "/sha256",
                expected=spec["sha256"],
                actual=digest,
            )
            ok = False
        if digest in policy.revoked:
            where = pointer + ("/sha256" if "sha256" in spec else "/module")
            self.deny("tool.revoked", f"module digest {digest} is revoked by the policy", where)
            ok = False
        signer = self.check_signature(pointer, spec, digest, data, builtin=builtin is not None)
        if signer is False:
            ok = False
        # A built-in's own gate actions always count; a manifest may only add to them.
        listed: list[str] = spec.get("actions", [])
        actions = tuple(dict.fromkeys([*(builtin.actions if builtin else ()), *listed]))
        for action in actions:
            where = f"{pointer}/actions/{listed.index(action)}" if action in listed else pointer + "/module"
            rule = _action_allowed(policy, action)
            if rule == "actions.denied":
                self.deny(rule, f"gate action {action!r} is denied by the policy", where)
                ok = False
            elif rule == "actions.not-allowed":
                self.deny(
                    rule,
                    f"gate action {action!r} is not in the policy's actions.allow",
                    where,
                )
                ok = False
        if not ok:
            return None
        return Tool(
            manifest=self.name,
            name=name,
            module=module,
            sha256=digest,
            version=spec.get("version"),
            signer=signer or None,
            signature_verified=bool(signer) and signer != catalog.SIGNER,
            actions=actions,
            kind=kind,
        )

    def check_size(self, path: Path, pointer: str) -> bool:
        """Rule ``modules.max-size``: checked on the file's size, before its bytes are read."""
        size, cap = path.stat().st_size, self.state.policy.modules.max_size
        if size > cap:
            self.deny(
                "modules.max-size",
                f"the module is {format_size(size)}, above the policy's modules.max_size {format_size(cap)}",
                pointer,
                expected=f"<= {cap}",
                actual=size,
            )
        return size <= cap

    def builtin_module(self, text: str, pointer: str) -> catalog.Builtin | None:
        """The catalog entry ``builtin:NAME`` names, its shipped bytes checked against the pin."""
        builtin = catalog.lookup(text)
        if builtin is None:
            self.deny(
                "tool.builtin-unknown",
                f"no built-in tool named {text[len(catalog.PREFIX) :]!r} (`sandrun catalog` lists them)",
                pointer,
            )
            return None
        try:
            catalog.check_bytes(builtin)
        except catalog.CorruptBuiltin as exc:
            self.deny("tool.builtin-corrupt", str(exc), pointer)
            return None
        return builtin

    def module_file(self, text: str, pointer: str) -> tuple[str, str, bytes] | None:
        """A module file's path as the plan names it (:meth:`_Compilation.input_key`), sha256 and
        bytes (the file becomes an input of the plan)."""
        path = self.resolve_module(text, pointer)
        if path is None:
            return None
        if not path.is_file():
            self.deny("tool.module.not-file", f"{text!r} is not a file", pointer)
            return None
        module = self.state.input_key(path)
        if module.startswith(catalog.PREFIX):  # the plan would name a built-in with other bytes
            self.deny(
                "tool.builtin-shadow",
                f"{text!r} is at {module!r}, a path the plan cannot tell from a built-in; rename it",
                pointer,
            )
            return None
        # Read once per file: a 1 MiB manifest naming one 64 MiB module from thousands of tools
        # (or symlinks to it) made check read, hash and validate it thousands of times.
        read = self.state.modules.get(path)
        if read is None:
            if not self.check_size(path, pointer):
                return None
            try:
                data = path.read_bytes()
            except OSError as exc:
                self.deny("tool.module.unreadable", f"{text!r} cannot be read: {exc.strerror}", pointer)
                return None
            read = self.state.modules[path] = (hashlib.sha256(data).hexdigest(), data)
        digest, data = read
        self.state.record_input(path, digest)
        reason = not_wasm_reason(data)
        if reason is not None:
            self.deny("tool.module.not-wasm", f"{text!r} {reason}", pointer)
            return None
        return module, digest, data

    def check_signature(
        self, pointer: str, spec: dict[str, Any], digest: str, module: bytes | None, *, builtin: bool = False
    ) -> str | Literal[False] | None:
        """The verified signer's key id (``builtin`` for a built-in without a signature: the package
        pins its bytes); None when unsigned and allowed; False when denied."""
        policy = self.state.policy
        signature = spec.get("signature")
        if signature is None and builtin:
            return catalog.SIGNER
        if signature is None and module is not None and has_signature_section(module):
            return self.check_embedded_signature(pointer, module)
        if signature is None:
            if policy.signatures_required:
                self.deny(
                    "signature.missing", "the policy requires a signature and this tool has none", pointer
                )
                return False
            return None
        key_id = signature["key"]
        key = policy.trusted_keys.get(key_id)
        if key is None and not policy.signatures_required:
            return None  # the policy neither requires signatures nor knows this key: an unsigned tool
        if key is None:
            self.deny(
                "signature.unknown-key",
                f"key {key_id!r} is not a trusted key of policy {policy.name!r}",
                pointer + "/signature/key",
            )
            return False
        if key_id in policy.revoked:
            self.deny("signature.revoked-key", f"key {key_id!r} is revoked", pointer + "/signature/key")
            return False
        if key.not_after is not None and self.state.today > key.not_after:
            self.deny(
                "signature.expired-key",
                f"key {key_id!r} expired on {key.not_after.isoformat()}",
                pointer + "/signature/key",
                expected=f"<= {key.not_after.isoformat()}",
                actual=self.state.today.isoformat(),
            )
            return False
        from runner.signing import verify_module_digest  # cryptography: only for a signed tool

        if not verify_module_digest(key.public_key, digest, signature["sig"]):
            self.deny(
                "signature.invalid",
                f"the signature does not verify for module sha256 {digest} with key {key_id!r}",
                pointer + "/signature/sig",
            )
            return False
        return key_id

    def check_embedded_signature(self, pointer: str, module: bytes) -> str | Literal[False] | None:
        """Rule ``signature.embedded``: a tool-conventions ``signature`` section (``runner.wasmsig``)
        verified against the trusted keys that are neither revoked nor expired."""
        policy = self.state.policy
        usable = {
            key_id: key.public_key
            for key_id, key in policy.trusted_keys.items()
            if key_id not in policy.revoked and (key.not_after is None or self.state.today <= key.not_after)
        }
        try:
            signers = embedded_signers(module, usable)
        except WasmSignatureError as exc:
            reason = str(exc)
        else:
            if signers:
                return sorted(signers)[0]
            reason = "no trusted, unexpired, unrevoked key verifies it"
        if not policy.signatures_required:
            return None  # as for a signature by an unknown key: an unsigned tool
        self.deny("signature.embedded", f"the module's signature section does not verify: {reason}", pointer)
        return False

    # -- jobs --------------------------------------------------------------------------------
    def check_jobs(self) -> list[JobSpec]:
        jobs: list[JobSpec] = []
        seen: dict[str, int] = {}
        for index, spec in enumerate(self.data["jobs"]):
            name = spec["name"]
            if name in seen:
                first = self.document.locate(f"/jobs/{seen[name]}/name").line
                self.deny(
                    "job.duplicate-name",
                    f"job name {name!r} is already used (line {first})",
                    f"/jobs/{index}/name",
                )
                continue
            seen[name] = index
            job = self.check_job(index, spec)
            if job is not None:
                jobs.append(job)
        self.check_needs(seen)
        return jobs

    def check_job(self, index: int, spec: dict[str, Any]) -> JobSpec | None:
        pointer = f"/jobs/{index}"
        before = len(self.state.violations)
        tool_name = spec["tool"]
        if tool_name not in self.data.get("tools", {}):
            self.deny("job.unknown-tool", f"no tool named {tool_name!r} in this manifest", pointer + "/tool")
        tool = self.tools.get(tool_name)
        limits = self.check_limits(pointer, spec.get("limits", {}))
        if limits is not None:
            self.check_engines(pointer, spec, limits)
        mounts = self.check_mounts(pointer, spec.get("fs", []))
        work_dir = self.check_work_dir(pointer, spec.get("work_dir"), mounts)
        stdin = self.check_stdin(pointer, spec.get("stdin"))
        network = self.check_network(pointer, spec.get("network"))
        hermetic = self.check_hermetic(pointer, spec, network)
        route = self.check_route(pointer, spec)
        if tool is not None and tool.kind == "component":
            self.check_component(pointer, spec)
        self.check_invoke(pointer, spec)
        env = tuple(sorted((str(k), str(v)) for k, v in spec.get("env", {}).items()))
        grants = Grants(
            ro_mounts=sum(1 for m in mounts if m.mode == "ro"),
            rw_mounts=sum(1 for m in mounts if m.mode == "rw"),
            network=network is not None and bool(network.allow),
            env_vars=len(env),
            signed=bool(tool and (tool.signature_verified or tool.signer == catalog.SIGNER)),
            actions=tool.actions if tool else (),
            tool_effects=_builtin_effects(tool),
        )
        job_score = score(grants)
        max_score = self.state.policy.max_score
        if tool is not None and max_score is not None and job_score > max_score:
            self.deny(
                "governance.score",
                f"governance score {job_score:.4f} is above the policy's max_score {max_score}",
                pointer,
                expected=f"<= {max_score}",
                actual=f"{job_score:.4f}",
            )
        if len(self.state.violations) > before or tool is None or limits is None:
            return None
        return JobSpec(
            id=f"{self.name}/{spec['name']}",
            manifest=self.name,
            name=spec["name"],
            tool=tool_name,
            module=tool.module,
            module_sha256=tool.sha256,
            args=tuple(spec.get("args", [])),
            program_name=spec.get("program_name") or tool_name,
            invoke=spec.get("invoke"),
            env=env,
            stdin=stdin,
            mounts=tuple(mounts),
            network=network,
            limits=limits,
            needs=tuple(f"{self.name}/{need}" for need in spec.get("needs", [])),
            expect_exit_code=spec.get("expect", {}).get("exit_code", 0),
            actions=tool.actions,
            score=f"{job_score:.4f}",
            hermetic=hermetic,
            route=route,
            kind=tool.kind,
            work_dir=work_dir,
        )

    def check_component(self, pointer: str, spec: dict[str, Any]) -> None:
        """Rule ``component.invoke``: a component's exports are typed, so its ``invoke`` is a WAVE
        call expression (``add(1, 2)``), not an export name with string ``args`` (docs/invoke.md)."""
        invoke = spec.get("invoke")
        if invoke is not None and not is_invoke_call(invoke):
            self.deny(
                "component.invoke",
                f"job {self.name + '/' + spec['name']!r} invokes {invoke!r} on a component: a component's "
                f"invoke is a WAVE call expression such as {invoke + '(...)'!r} (docs/invoke.md)",
                pointer + "/invoke",
            )

    def check_hermetic(self, pointer: str, spec: dict[str, Any], network: Network | None) -> Hermetic | None:
        """Rules ``hermetic.required`` (the policy wants every job hermetic), ``hermetic.network``
        (a hermetic job has no network: its answers could not be replayed) and ``hermetic.epoch``."""
        asked = spec.get("hermetic", False)
        job_id = f"{self.name}/{spec['name']}"
        if asked is False:
            if self.state.policy.hermetic_required:
                self.deny(
                    "hermetic.required",
                    f"the policy requires every job to be hermetic; {job_id!r} is not",
                    pointer,
                )
            return None
        if network is not None:
            self.deny(
                "hermetic.network",
                f"hermetic job {job_id!r} asks for network; a hermetic job has none",
                pointer + "/network",
            )
        from runner.hermetic import settings as hermetic_settings

        try:
            return hermetic_settings(job_id, asked)
        except ValueError as exc:
            self.deny("hermetic.epoch", str(exc), pointer + "/hermetic")
            return None

    def check_invoke(self, pointer: str, spec: dict[str, Any]) -> None:
        """A WAVE call expression (``add(1, 2)``) must parse; its arguments are checked against the
        export's type only at run time, where the module is loaded (docs/invoke.md)."""
        invoke = spec.get("invoke")
        if invoke is None or not is_invoke_call(invoke):
            return
        from runner.wave import WaveError, parse_call  # only for jobs that use the call form

        try:
            parse_call(invoke)
        except WaveError as exc:
            self.deny(exc.rule_id, f"invoke: {exc.message}", pointer + "/invoke")

    def check_route(self, pointer: str, spec: dict[str, Any]) -> str | None:
        """A served job (``route``): its route is unique across every manifest, its mounts are
        read-only (requests run concurrently and come from anyone), and its stdin is the request."""
        route: str | None = spec.get("route")
        if route is None:
            return None
        where = pointer + "/route"
        if route == "/healthz" or route.startswith("/healthz/"):
            self.deny("route.reserved", "/healthz is sandrun serve's own health check", where)
        here = f"{self.document.path}:{self.document.locate(where).line}"
        first = self.state.routes.setdefault(route, here)
        if first != here:
            self.deny("route.duplicate", f"route {route!r} is already served by the job at {first}", where)
        for index, entry in enumerate(spec.get("fs", [])):
            if entry.get("mode", "ro") == "rw":
                self.deny(
                    "route.mount-rw",
                    "a served job's mounts are read-only (requests run concurrently, sent by anyone)",
                    f"{pointer}/fs/{index}/mode",
                )
        if spec.get("stdin") is not None:
            self.deny(
                "route.stdin", "a served job's stdin is the request body: remove stdin", f"{pointer}/stdin"
            )
        return route

    def check_limits(self, pointer: str, data: dict[str, Any]) -> Limits | None:
        policy = self.state.policy
        problems: list[Violation] = []
        asked = parse_limits(self.document, pointer + "/limits", data, problems)
        self.state.violations.extend(problems)
        values: dict[str, int | None] = {}
        denied = bool(problems)
        for field_name, attribute in (
            ("fuel", "fuel"),
            ("memory", "memory"),
            ("timeout", "timeout_ms"),
            ("stack", "stack"),
            ("output", "output"),
            ("disk", "disk"),
        ):
            cap = getattr(policy.max_limits, attribute)
            value = getattr(asked, attribute)
            if value is None:
                value = getattr(policy.default_limits, attribute)
            if value is None:
                value = getattr(BUILTIN_LIMITS, attribute)
            if value is None and cap is not None and field_name != "fuel":
                value = cap  # fuel is metered only when a job or the policy's default asks for it
            if value is not None and cap is not None and value > cap:
                where = f"{pointer}/limits/{field_name}" if field_name in data else f"{pointer}"
                self.deny(
                    "limits.max",
                    f"{field_name} {_shown(field_name, value)} is above the policy's maximum "
                    f"{_shown(field_name, cap)}",
                    where,
                    expected=f"<= {cap}",
                    actual=value,
                )
                denied = True
            elif field_name == "stack" and value is not None and value > MAX_WASM_STACK:
                where = f"{pointer}/limits/stack" if "stack" in data else pointer
                self.deny(
                    "limits.engine-max",
                    f"stack {_shown('stack', value)} is above the engine's maximum "
                    f"{_shown('stack', MAX_WASM_STACK)} (Wasmtime aborts on a larger one)",
                    where,
                    expected=f"<= {MAX_WASM_STACK}",
                    actual=value,
                )
                denied = True
            values[attribute] = value
        if denied:
            return None
        return Limits(**values)  # type: ignore[arg-type]

    def check_engines(self, pointer: str, spec: dict[str, Any], limits: Limits) -> None:
        """Rule ``modules.max-engines``: each distinct (fuel metering, stack) pair costs an engine,
        a compilation of each tool using it and a ticker thread; the job that goes over is denied."""
        engines = self.state.engines
        config = (limits.fuel is not None, limits.stack)
        job_id = f"{self.name}/{spec['name']}"
        if config in engines:
            return
        cap = self.state.policy.max_engines
        if len(engines) < cap:
            engines[config] = job_id
            return
        asked = spec.get("limits", {})
        where = f"{pointer}/limits/stack" if "stack" in asked else f"{pointer}/limits" if asked else pointer
        self.deny(
            "modules.max-engines",
            f"job {job_id!r} would be engine configuration {len(engines) + 1} (fuel "
            f"{'on' if config[0] else 'off'}, stack {format_size(config[1])}); the policy's "
            f"modules.max_engines is {cap}: reuse another job's stack and fuel setting",
            where,
            expected=f"<= {cap}",
            actual=len(engines) + 1,
        )

    def check_mounts(self, pointer: str, entries: list[dict[str, Any]]) -> list[Mount]:
        policy = self.state.policy
        mounts: list[Mount] = []
        guests: dict[str, int] = {}
        for index, entry in enumerate(entries):
            where = f"{pointer}/fs/{index}"
            mode = entry.get("mode", "ro")
            guest = posixpath.normpath(entry["guest"])
            if ".." in entry["guest"].split("/") or guest.startswith("//"):
                self.deny(
                    "fs.guest-invalid",
                    f"guest path {entry['guest']!r} must be absolute without '..'",
                    where + "/guest",
                )
                continue
            for other, other_index in guests.items():
                if other == guest:
                    self.deny(
                        "fs.guest-duplicate",
                        f"guest path {guest!r} is already mounted by fs/{other_index}",
                        where + "/guest",
                    )
                elif guest.startswith(other.rstrip("/") + "/") or other.startswith(guest.rstrip("/") + "/"):
                    self.deny(
                        "fs.guest-nested",
                        f"guest path {guest!r} nests with {other!r} (fs/{other_index})",
                        where + "/guest",
                    )
            guests.setdefault(guest, index)
            path = self.resolve(entry["host"], where + "/host", "fs")
            if path is None:
                continue
            if not path.is_dir():
                self.deny("fs.not-directory", f"{entry['host']!r} is not a directory", where + "/host")
                continue
            if not _within(path, policy.roots + policy.write_roots):
                self.deny(
                    "fs.outside-roots",
                    f"{entry['host']!r} resolves to {self.state.relative(path)!r}, "
                    "outside every fs.roots entry of the policy",
                    where + "/host",
                )
                continue
            if mode == "rw" and not _within(path, policy.write_roots):
                self.deny(
                    "fs.write-denied",
                    f"a rw mount of {entry['host']!r} is not allowed by the policy's fs.write",
                    where + "/mode",
                )
                continue
            mounts.append(Mount(host=self.state.relative(path), guest=guest, mode=mode))
        return mounts

    def check_work_dir(self, pointer: str, text: str | None, mounts: list[Mount]) -> str | None:
        """Rules ``fs.work-dir-outside-mounts``, ``fs.work-dir-root-mount`` and ``fs.work-dir-missing``:
        ``work_dir`` is a folder inside one of the job's mounts, reached without a symlink (the run
        opens it the same way, below the mount's descriptor: docs/exec.md)."""
        if text is None:
            return None
        where = pointer + "/work_dir"
        found = work_dir_mount(tuple(mounts), text)
        if found is None:
            guests = ", ".join(repr(m.guest) for m in mounts) or "none"
            self.deny(
                "fs.work-dir-outside-mounts",
                f"work_dir {text!r} is not a plain absolute path inside a mount of the job "
                f"(mounts: {guests})",
                where,
            )
            return None
        mount, below = found
        path = posixpath.join(mount.guest, below) if below else mount.guest
        if path != "/" and any(m.guest == "/" for m in mounts):
            self.deny(
                "fs.work-dir-root-mount",
                f"work_dir {text!r} cannot be honoured next to a mount at guest '/': WASI libc resolves "
                "relative paths and '/' through the same preopen name, so one would hide the other",
                where,
            )
            return None
        folder = self.state.root / mount.host / below
        try:
            real = folder.resolve(strict=True)
        except (OSError, RuntimeError):
            real = None
        if real is None or real != Path(os.path.normpath(folder)) or not real.is_dir():
            self.deny(
                "fs.work-dir-missing",
                f"work_dir {text!r} is not a folder inside its mount {mount.guest!r} "
                "(missing, a file, or it leads through a symlink)",
                where,
            )
            return None
        return path

    def check_stdin(self, pointer: str, text: str | None) -> str | None:
        if text is None:
            return None
        path = self.resolve(text, pointer + "/stdin", "stdin")
        if path is None:
            return None
        if not path.is_file():
            self.deny("stdin.missing", f"{text!r} is not a file", pointer + "/stdin")
            return None
        if not _within(path, self.state.policy.roots + self.state.policy.write_roots):
            self.deny(
                "stdin.outside-roots",
                f"{text!r} is outside every fs.roots entry of the policy",
                pointer + "/stdin",
            )
            return None
        from runner.hermetic import file_sha256

        try:  # hashed as it is read: a stdin file may be any size (a pack file of the checkout)
            digest = file_sha256(path)
        except OSError as exc:
            self.deny("stdin.missing", f"{text!r} cannot be read: {exc.strerror}", pointer + "/stdin")
            return None
        self.state.record_input(path, digest)
        return self.state.relative(path)

    def check_network(self, pointer: str, data: dict[str, Any] | None) -> Network | None:
        if data is None:
            return None
        from runner.egress.rules import AllowEntry, blocked_entirely
        from runner.egress.urls import UrlError
        from runner.hosts import HostPatternError

        policy = self.state.policy
        block = list(dict.fromkeys([*data.get("block", []), *policy.network_block]))
        allow: list[str | HttpRule] = []
        for index, entry in enumerate(data.get("allow", [])):
            where = f"{pointer}/network/allow/{index}"
            try:
                inner = AllowEntry.parse(entry)
            except HostPatternError as exc:
                self.deny("network.pattern", str(exc), where)
                continue
            if not self.state.covers(inner):
                self.deny(
                    "network.uncovered",
                    f"{_entry_text(entry)} is not covered by the policy's network.allow "
                    f"{[_entry_text(e) for e in policy.document.data.get('network', {}).get('allow', [])]}",
                    where,
                )
            blocker = blocked_entirely(inner.pattern, block)
            if blocker is not None:
                self.warn(
                    "network.unreachable",
                    f"{inner.pattern.text} can never succeed: every address it admits is blocked "
                    f"by {blocker!r}",
                    where,
                )
            allow.append(entry if isinstance(entry, str) else _http_rule(entry))
        secrets = []
        for index, entry in enumerate(data.get("secrets", [])):
            where = f"{pointer}/network/secrets/{index}"
            try:
                key = secret_key(entry)
            except UrlError as exc:
                self.deny("network.secret", exc.message, where + "/origin")
                continue
            if key not in policy.network_secrets:
                self.deny(
                    "network.secret",
                    f"secret {entry['value_from']['env']} for {entry['header']} on {entry['origin']} is not "
                    "allowed by the policy's network.secrets",
                    where,
                )
                continue
            scheme, host, port = key[0]
            # an IPv6 host in brackets, or the runner could not read the origin back (":" is the port's)
            origin = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
            secrets.append(
                SecretRef(origin=origin, header=entry["header"], env=key[2], format=entry.get("format", "{}"))
            )
        problems: list[Violation] = []
        limits = parse_net_limits(
            self.document,
            f"{pointer}/network/limits",
            data.get("limits", {}),
            policy.network_limits,
            problems,
        )
        for problem in problems:
            self.state.violations.append(problem)
        return Network(allow=tuple(allow), block=tuple(block), secrets=tuple(secrets), limits=limits)

    def warn(self, rule_id: str, message: str, pointer: str) -> None:
        """A finding that denies nothing: logged (stderr in the CLI) as ``file:line:col: /ptr [rule] ...``."""
        import logging  # only for a warning: most compiles have none, and every start would pay

        logging.getLogger("sandrun.compile").warning(
            "%s", Violation(rule_id, message, self.document.locate(pointer)).render()
        )

    def check_needs(self, names: dict[str, int]) -> None:
        graph: dict[str, list[str]] = {}
        for name, index in names.items():
            needs = self.data["jobs"][index].get("needs", [])
            for need_index, need in enumerate(needs):
                if need not in names:
                    self.deny(
                        "needs.unknown",
                        f"job {name!r} needs {need!r}, which is not a job of this manifest",
                        f"/jobs/{index}/needs/{need_index}",
                    )
            graph[name] = [need for need in needs if need in names]
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as exc:
            cycle: list[str] = exc.args[1]
            first = names[cycle[0]]
            self.deny("needs.cycle", "needs form a cycle: " + " -> ".join(cycle), f"/jobs/{first}/needs")


def compile_plan(
    manifests: list[Document],
    policy: Policy,
    root: Path,
    *,
    today: dt.date | None = None,
    named_module: Path | None = None,
) -> Plan:
    """Check every manifest against ``policy``; return the plan or raise with every denial.

    ``named_module`` is a module file the user named on the command line (``sandrun exec``): it
    may lie outside the root, as ``wasmtime run`` would accept it; mounts and stdin stay checked.

    Raises :func:`~runner.errors.error_for` of every violation found (exit 2 or 3, as the rules say).
    """
    state = _Compilation(
        root=root.resolve(),
        policy=policy,
        today=today or dt.datetime.now(dt.timezone.utc).date(),
        named_module=None if named_module is None else named_module.resolve(),
    )
    policy_path = Path(policy.path).resolve()
    state.record_input(policy_path, policy.document.sha256)
    names: dict[str, Document] = {}
    tools: list[Tool] = []
    jobs: list[JobSpec] = []
    for document in manifests:
        compiler = _ManifestCompiler(state, document)
        if compiler.name in names:
            other = names[compiler.name]
            state.deny(
                document,
                "manifest.duplicate-name",
                f"manifest name {compiler.name!r} is also used by {other.path}",
                "/metadata/name",
            )
            continue
        names[compiler.name] = document
        state.record_input(Path(document.path).resolve(), document.sha256)
        compiler.check_tools()
        jobs.extend(compiler.check_jobs())
        tools.extend(t for t in compiler.tools.values() if t is not None)
    if state.violations:
        raise error_for(state.violations)
    policy_rel = state.input_key(policy_path)
    return Plan(
        policy=PolicyRef(
            name=policy.name,
            path=policy_rel,
            sha256=policy.document.sha256,
            git_commit=policy_commit(policy_path, policy.document.sha256),
        ),
        inputs=tuple(InputFile(path=p, sha256=d) for p, d in sorted(state.inputs.items())),
        wasm_features=enabled(policy.denied_features),
        manifests=tuple(state.input_key(Path(d.path).resolve()) for d in manifests),
        tools=tuple(tools),
        jobs=tuple(jobs),
        modules=policy.modules,
    )


def denial_error(violations: list[Violation]) -> SandrunError:
    """The error for a mix of problems: invalid input (exit 2) wins over policy denials (exit 3)."""
    return error_for(violations)


def _entry_text(entry: str | dict[str, Any]) -> str:
    return repr(entry) if isinstance(entry, str) else f"{entry.get('host')!r} (methods/paths narrowed)"


def _http_rule(entry: dict[str, Any]) -> HttpRule:
    methods, paths = entry.get("methods"), entry.get("paths")
    return HttpRule(
        host=entry["host"],
        methods=None if methods is None else tuple(methods),
        paths=None if paths is None else tuple(paths),
    )
