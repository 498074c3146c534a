"""The library's front door: load, check, compile (and, later in this module, run and verify).

Every function here takes paths and returns values or raises a :class:`~runner.errors.SandrunError`
holding *every* problem found across all the files, so callers (the CLI, CI integrations, tests)
never see half the story.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import __version__
from runner.errors import (
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    InputError,
    Location,
    PolicyDenied,
    SandrunError,
    Violation,
)
from runner.plan import Plan
from runner.policy.compiler import compile_plan, denial_error
from runner.policy.model import Policy, policy_from_document
from runner.source import MAX_DOCUMENT_BYTES, Document, load_yaml_file

if TYPE_CHECKING:
    from runner.audit import Checkpoint
    from runner.executor import BatchOptions
    from runner.shard import ShardRequest
    from runner.signing import PrivateKey

__all__ = [
    "MANIFEST_SUFFIXES",
    "expand_paths",
    "load_manifests",
    "load_policy",
    "compile_manifests",
    "compile_documents",
    "load_plan",
    "verified_plan",
    "plan_maker",
    "run",
    "RunOutcome",
    "new_run_id",
]

MANIFEST_SUFFIXES = (".yaml", ".yml")


def expand_paths(paths: Iterable[Path]) -> list[tuple[Path, bool]]:
    """``(file, named)`` pairs: files as given (``named``), folders searched recursively for
    ``*.yaml``/``*.yml``, in a stable order."""
    found: dict[Path, bool] = {}
    problems: list[Violation] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file()):
                found.setdefault(file, False)
        elif path.is_file():
            found[path] = True
        else:
            problems.append(Violation("input.missing", "no such file or folder", Location(file=str(path))))
    if problems:
        raise InputError(violations=tuple(problems))
    return list(found.items())


#: A top-level line saying a file is meant for Sandrun, for files too broken to load.
_SANDRUN_LINE = re.compile(rb"^(?:kind:[ \t]*[\"']?Manifest\b|apiVersion:[ \t]*[\"']?sandrun/)", re.MULTILINE)


def _is_manifest(document: Document) -> bool:
    """A document found in a folder is checked when it says it is a Sandrun manifest.

    ``kind: Manifest``, or a ``sandrun/`` apiVersion with any kind but ``Policy`` (a misspelt kind
    is reported, not skipped); anything else there (a CI workflow, the policy) is skipped.
    """
    data = document.data
    if not isinstance(data, dict):
        return False
    kind, api = data.get("kind"), data.get("apiVersion")
    return kind == "Manifest" or (isinstance(api, str) and api.startswith("sandrun/") and kind != "Policy")


def _claims_to_be_sandrun(path: Path) -> bool:
    """Whether a file found in a folder that failed to load says it is meant for Sandrun."""
    try:
        with path.open("rb") as handle:
            head = handle.read(MAX_DOCUMENT_BYTES)
    except OSError:
        return True  # cannot tell: report it
    return _SANDRUN_LINE.search(head) is not None


def load_manifests(
    paths: Iterable[Path], *, on_skip: Callable[[Path], None] | None = None
) -> tuple[list[Document], list[Violation]]:
    """Every manifest that loaded and validated, and the problems of those that did not.

    Files found in a folder that are not Sandrun manifests (``kind`` not ``Manifest``) are skipped
    and passed to ``on_skip``; files named one by one are always read as manifests.
    """
    from runner.schema import validate

    paths = list(paths)
    documents: list[Document] = []
    problems: list[Violation] = []
    skipped = 0
    for path, named in expand_paths(paths):
        try:
            document = load_yaml_file(path)
        except InputError as exc:
            if named or _claims_to_be_sandrun(path):
                problems.extend(exc.violations)
                continue
            document = None
        if document is None or not (named or _is_manifest(document)):
            skipped += 1
            if on_skip is not None:
                on_skip(path)
            continue
        found = validate(document, "manifest")
        problems.extend(found)
        if not found:
            documents.append(document)
    if not documents and not problems:
        also = f" ({skipped} other YAML file(s) skipped)" if skipped else ""
        raise InputError.one(
            "input.empty",
            "no manifests (*.yaml, *.yml with kind: Manifest) found in "
            + ", ".join(str(p) for p in paths)
            + also,
        )
    return documents, problems


def resolve_root(root: Path | None) -> Path:
    """The compile root (default: the current folder), symlinks followed; a loop is invalid input."""
    try:
        return (root or Path.cwd()).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise InputError.one("root.missing", f"the root cannot be resolved: {exc}") from None


def _validated(path: Path, kind: str) -> tuple[Document | None, list[Violation]]:
    """Load and schema-check one file; problems are returned, not raised, to collect them all."""
    from runner.schema import validate

    try:
        document = load_yaml_file(path)
    except InputError as exc:
        return None, list(exc.violations)
    problems = validate(document, kind)  # type: ignore[arg-type]
    return (None if problems else document), problems


def load_policy(path: Path, root: Path) -> Policy:
    document, problems = _validated(path, "policy")
    if document is None:
        raise InputError(violations=tuple(problems))
    return policy_from_document(document, root)


def compile_manifests(
    paths: Iterable[Path],
    policy_path: Path,
    *,
    root: Path | None = None,
    today: dt.date | None = None,
    on_skip: Callable[[Path], None] | None = None,
) -> Plan:
    """Load, validate and compile; raise one error carrying every problem of every file.

    Invalid input (YAML, schema, missing files...) makes it an :class:`InputError` (exit 2),
    otherwise policy denials make it a :class:`~runner.errors.PolicyDenied` (exit 3); the rule
    registry decides which. ``on_skip`` gets each YAML file in a folder that is not a manifest.
    """
    documents, problems = load_manifests(paths, on_skip=on_skip)
    return compile_documents(documents, policy_path, root=root, today=today, problems=problems)


def compile_documents(
    documents: list[Document],
    policy_path: Path,
    *,
    root: Path | None = None,
    today: dt.date | None = None,
    problems: Sequence[Violation] = (),
    named_module: Path | None = None,
) -> Plan:
    """Compile manifests already loaded; ``problems`` are earlier ones to report together.

    ``named_module``: the module a user named on the command line, accepted outside the root.
    """
    root = resolve_root(root)
    found = list(problems)
    try:
        policy: Policy | None = load_policy(policy_path, root)
    except InputError as exc:
        policy = None
        found.extend(exc.violations)
    if policy is not None:
        try:
            plan = compile_plan(documents, policy, root, today=today, named_module=named_module)
        except SandrunError as exc:
            found.extend(exc.violations)
        else:
            if not found:
                return plan
    found.sort(key=lambda v: (v.location.file, v.location.line or 0) if v.location else ("", 0))
    raise denial_error(found)


# -- running ----------------------------------------------------------------------------------


def load_plan(path: Path) -> Plan:
    """Read a plan written by ``sandrun compile``; a damaged one is invalid input, never a traceback."""
    import json

    try:
        raw = path.read_bytes()
        plan = Plan.from_dict(json.loads(raw))
    except OSError as exc:
        raise InputError.one(
            "input.read", f"cannot read plan: {exc.strerror}", Location(file=str(path))
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError.one(
            "plan.invalid", f"not a valid sandrun plan: {exc}", Location(file=str(path))
        ) from None
    if plan.to_json() != raw.rstrip(b"\n"):
        raise InputError.one(
            "plan.invalid",
            "the plan is not in canonical form (edited by hand?); compile it again",
            Location(file=str(path)),
        )
    return plan


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    """What ``run`` produced: the report dict (as written), the exit code, and the signed head."""

    report: dict[str, Any]
    exit_code: int
    checkpoint: Checkpoint
    out_dir: Path
    interrupted: bool


def new_run_id() -> str:
    """Sortable by time, unique without coordination: ``20261121T183000Z-3f9a1c2b``."""
    import secrets

    now = dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def _tool_records(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "manifest": t.manifest,
            "name": t.name,
            "module": t.module,
            "module_sha256": t.sha256,
            "version": t.version,
            "signer": t.signer,
            "signature_verified": t.signature_verified,
            "actions": list(t.actions),
        }
        for t in plan.tools
    ]


def _denial_records(error: SandrunError) -> list[tuple[str, dict[str, Any]]]:
    """Audit records for a compile-time denial: one per denied tool, then the run's denial."""
    records: list[tuple[str, dict[str, Any]]] = []
    for violation in error.violations:
        location = violation.location
        if location is not None and location.pointer.startswith("/tools/"):
            pointer = location.pointer
            kind = (
                "tool.revoked"
                if violation.rule_id in ("tool.revoked", "signature.revoked-key")
                else "tool.denied"
            )
            records.append(
                (
                    kind,
                    {
                        "tool": pointer.split("/")[2],
                        "file": location.file,
                        "rule_id": violation.rule_id,
                        "reason": violation.message,
                    },
                )
            )
    records.append(
        ("run.denied", {"exit_code": error.exit_code, "violations": [v.to_dict() for v in error.violations]})
    )
    return records


def run(
    make_plan: Callable[[], Plan],
    *,
    root: Path | None = None,
    out_dir: Path = Path("sandrun-out"),
    options: BatchOptions | None = None,
    signing_key: PrivateKey | None = None,
    signing_key_name: str | None = None,
    cancel: threading.Event | None = None,
    on_progress: Callable[[Any], None] | None = None,
    sources: Sequence[str] = (),
    operator_policy: Path | None = None,
    continue_unsealed: bool = False,
    shard: ShardRequest | None = None,
) -> RunOutcome:
    """Make the plan, run it, log every step, write the outputs, seal the log.

    ``make_plan`` compiles manifests or loads a plan (see :func:`plan_maker`); a denial it raises
    is logged, sealed and its checkpoint published before it propagates, so the audit log records
    refused runs too. The previous run's reports are removed first, so ``out_dir`` never shows a
    report of another run; a run that cannot write its log or outputs (a full disk) ends unsealed
    (``audit.write-failed``, exit 4). ``continue_unsealed``: see ``AuditLog.open``.
    ``operator_policy`` is the policy the operator named (``--policy``), recorded with the plan.
    ``shard`` runs only that shard's jobs, after a ``shard.assigned`` record (docs/shards.md).
    """
    from runner.audit import AuditLog
    from runner.executor import BatchOptions as _BatchOptions
    from runner.executor import run_plan
    from runner.fileio import write_atomic
    from runner.outputs import LogFolder, remove_outputs, unsealed_on_failure, write_outputs
    from runner.report import build_report
    from runner.shard import SHARD_ASSIGNED

    root = resolve_root(root)
    options = options or _BatchOptions()
    run_id = new_run_id()
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        AuditLog.open(out_dir, run_id=run_id, continue_unsealed=continue_unsealed) as log,
        unsealed_on_failure(log, out_dir),
    ):
        remove_outputs(out_dir)  # under the log's lock, before anything of this run is written
        log.append("run.started", {"sandrun": __version__, "sources": list(sources)})
        try:
            plan = make_plan()
        except SandrunError as error:
            for kind, data in _denial_records(error):
                log.append(kind, data)
            denied = log.seal(signing_key, signing_key_name)
            write_atomic(out_dir / "checkpoint.txt", str(denied).encode("utf-8"))
            raise
        plan_sha256 = plan.sha256  # hashing a big plan costs: once per run
        log.append("plan.compiled", _plan_record(plan, plan_sha256, operator_policy))
        if shard is not None:
            assignment = shard.assign(plan, plan_sha256)
            log.append(SHARD_ASSIGNED, assignment.record())
            plan = assignment.plan
        tools = _tool_records(plan)
        for record in tools:
            log.append("tool.registered", record)
        for record in log.versioned_tools(tools):
            log.append("tool.versioned", record)
        protected = tuple(p.resolve() for p in (out_dir, *options.protected_dirs))
        with LogFolder(out_dir) as logs:
            batch = run_plan(
                plan,
                root,
                replace(options, protected_dirs=protected),
                on_event=log.append,
                on_progress=on_progress,
                on_output=lambda job, outcome: logs.add(job.manifest, job.name, outcome),
                cancel=cancel,
            )
            report = build_report(
                run_id=run_id, plan_sha256=plan_sha256, policy=plan.policy.name, results=batch.results
            )
            write_outputs(out_dir, report, logs)
        checkpoint = log.seal(signing_key, signing_key_name)
        write_atomic(out_dir / "checkpoint.txt", str(checkpoint).encode("utf-8"))
    if batch.interrupted:
        exit_code = EXIT_INTERRUPTED
    else:
        exit_code = EXIT_OK if report["ok"] else EXIT_JOB_FAILED
    return RunOutcome(
        report=report,
        exit_code=exit_code,
        checkpoint=checkpoint,
        out_dir=out_dir,
        interrupted=batch.interrupted,
    )


def verified_plan(
    path: Path, policy_path: Path, *, root: Path | None = None, today: dt.date | None = None
) -> Plan:
    """A compiled plan, run only under the policy the operator names, and only if it still compiles to itself.

    A plan is a lock file, not a grant; whoever wrote it never picks the policy:

    1. the policy the plan names must lie inside the root (``plan.policy-outside-root``, exit 3);
    2. ``policy_path`` (``run --policy``) decides: it must be the very file the plan was compiled
       under, same path and sha256 (``plan.policy-mismatch``, exit 3);
    3. recompiling the plan's manifests under it must give the same bytes, so an edited plan, a
       changed input or a key that has since expired is refused (``plan.mismatch``, exit 3).
    """
    plan = load_plan(path)
    base = resolve_root(root)
    where = Location(file=str(path), pointer="/policy/path")
    named = (base / plan.policy.path).resolve()
    # (1) the plan's policy is inside the root
    if not named.is_relative_to(base):
        raise PolicyDenied.one(
            "plan.policy-outside-root",
            f"the plan names the policy {plan.policy.path!r}, outside the root {base}; a plan never "
            "picks its own policy: compile it under a policy inside the root",
            where,
        )
    # (2) the operator's policy is the one the plan was compiled under
    operator = load_policy(policy_path, base)
    if Path(operator.path).resolve() != named or operator.document.sha256 != plan.policy.sha256:
        raise PolicyDenied.one(
            "plan.policy-mismatch",
            f"the plan was compiled under {plan.policy.path} (sha256 {plan.policy.sha256[:12]}), "
            f"not under the policy you named, {policy_path} (sha256 {operator.document.sha256[:12]}); "
            "compile it under that policy",
            where,
            expected=operator.document.sha256,
            actual=plan.policy.sha256,
        )
    # (3) the plan is what its inputs compile to now, under that policy
    again = compile_manifests([base / m for m in plan.manifests], policy_path, root=base, today=today)
    if again.sha256 != plan.sha256:
        raise PolicyDenied.one(
            "plan.mismatch",
            f"the plan (sha256 {plan.sha256[:12]}) does not match what its manifests and policy compile "
            f"to now "
            f"({again.sha256[:12]}): it was edited or its inputs changed; compile it again",
            Location(file=str(path)),
        )
    return plan


def _plan_record(plan: Plan, plan_sha256: str, operator_policy: Path | None) -> dict[str, Any]:
    """The ``plan.compiled`` record, with the policy the operator named (``--policy``) as typed.

    The plan was compiled under that very file (:func:`verified_plan` refuses any other), so its
    sha256 is the plan's policy sha256.
    """
    policy = plan.policy
    return {
        "operator_policy": None
        if operator_policy is None
        else {"path": str(operator_policy), "sha256": policy.sha256},
        "plan_sha256": plan_sha256,
        "policy": {
            "name": policy.name,
            "path": policy.path,
            "sha256": policy.sha256,
            "git_commit": policy.git_commit,
        },
        "inputs": [{"path": i.path, "sha256": i.sha256} for i in plan.inputs],
        "jobs": [job.id for job in plan.jobs],
        "wasm_features": list(plan.wasm_features),
    }


def plan_maker(
    sources: Sequence[Path],
    policy_path: Path | None,
    *,
    root: Path | None = None,
    today: dt.date | None = None,
) -> Callable[[], Plan]:
    """What ``sandrun run`` runs: one ``*.json`` plan, or manifests, under the policy the operator names."""
    if policy_path is None:
        raise InputError.one(
            "input.policy", "--policy is required: manifests and plans run only under the policy you name"
        )
    if len(sources) == 1 and sources[0].suffix == ".json":
        return lambda: verified_plan(sources[0], policy_path, root=root, today=today)
    return lambda: compile_manifests(sources, policy_path, root=root, today=today)


def default_policy_path() -> Path:
    """The strict default policy (``policies/default.yaml``), shipped inside the package too."""
    from importlib import resources

    return Path(str(resources.files("runner").joinpath("data/default-policy.yaml")))


#: A JSON surrogate pair (after an even number of backslashes): YAML wants ``\\UXXXXXXXX`` instead.
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _json_for_yaml(data: Any) -> bytes:
    """``data`` as JSON that YAML 1.2 reads back exactly, characters above U+FFFF included.

    JSON writes those as surrogate pairs, which YAML refuses; an argument that is not valid
    Unicode at all (undecodable bytes on the command line) is refused here, naming itself.
    """
    import json

    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[max(exc.start - 20, 0) : exc.end + 20]
        raise InputError.one(
            "input.encoding", f"not valid UTF-8 (undecodable bytes on the command line?): {bad!r}"
        ) from None

    def join(match: re.Match[str]) -> str:
        high, low = int(match[2], 16), int(match[3], 16)
        return f"{match[1]}\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"

    return _SURROGATE_PAIR.sub(join, json.dumps(data, indent=1)).encode("ascii")


def exec_manifest(
    module: Path,
    args: Sequence[str],
    *,
    mounts: Sequence[tuple[str, str, str]] = (),
    env: Mapping[str, str] | None = None,
    limits: Mapping[str, Any] | None = None,
    invoke: str | None = None,
    program_name: str | None = None,
) -> Document:
    """The one-job manifest ``sandrun exec`` runs, built from its flags and checked like any other.

    It goes through the same strict loader and schema (JSON is YAML), so a bad flag value is
    reported exactly as the same mistake in a manifest file would be.
    """
    import hashlib

    from runner.source import load_yaml_bytes

    try:
        digest = hashlib.sha256(module.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError.one(
            "input.read", f"cannot read module: {exc.strerror}", Location(file=str(module))
        ) from None
    tool = re.sub(r"[^a-z0-9-]+", "-", module.stem.lower()).strip("-")[:60] or "tool"
    job: dict[str, Any] = {"name": "exec", "tool": tool, "args": list(args)}
    if program_name is not None:
        job["program_name"] = program_name
    if invoke is not None:
        job["invoke"] = invoke
    if env:
        job["env"] = dict(env)
    if mounts:
        job["fs"] = [{"host": host, "guest": guest, "mode": mode} for host, guest, mode in mounts]
    if limits:
        job["limits"] = dict(limits)
    manifest = {
        "apiVersion": "sandrun/v1",
        "kind": "Manifest",
        "metadata": {"name": "exec"},
        "tools": {tool: {"module": str(module), "sha256": digest}},
        "jobs": [job],
    }
    from runner.schema import validate

    document = load_yaml_bytes(_json_for_yaml(manifest), "(sandrun exec)")
    problems = validate(document, "manifest")
    if problems:
        raise InputError(violations=tuple(problems))
    return document


#: How many ``sandrun exec`` run folders the per-user state folder keeps (the newest).
EXEC_RUNS_KEPT = 32


def exec_out_dir(environ: Mapping[str, str]) -> Path:
    """A new folder for one ``sandrun exec`` run when no ``--out`` is given, so nothing is left in
    the current folder: ``$XDG_STATE_HOME/sandrun/exec/<time>-<pid>`` (else ``~/.local/state``),
    private to the user; only the newest :data:`EXEC_RUNS_KEPT` are kept."""
    import os
    import shutil
    import time

    base = Path(environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "sandrun" / "exec"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = (
        base / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**9:09d}-{os.getpid()}"
    )
    folder.mkdir(mode=0o700)
    runs = sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink())
    for old in runs[:-EXEC_RUNS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return folder
