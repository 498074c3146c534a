"""The library's front door: load, check, compile, run; verify, show and report a log; keys and signatures.

Every function here takes paths and returns values or raises a :class:`~runner.errors.SandrunError`
holding *every* problem found across all the files, so callers (the CLI, CI integrations, tests)
never see half the story.
"""

from __future__ import annotations

import datetime as dt
import errno
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import __version__
from runner.canonical import sha256_hex
from runner.errors import (
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    AuditError,
    InputError,
    Location,
    PolicyDenied,
    SandrunError,
    Violation,
)
from runner.plan import Plan, PolicyRef
from runner.policy.compiler import compile_plan, denial_error
from runner.policy.model import Policy, policy_from_document
from runner.source import MAX_DOCUMENT_BYTES, Document, load_yaml_bytes, load_yaml_file

if TYPE_CHECKING:
    from runner.audit import AuditLog, Checkpoint, VerifyReport
    from runner.executor import BatchOptions
    from runner.report import JobPlace
    from runner.shard import ShardRequest
    from runner.signing import KeyPair, PrivateKey, PublicKey

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
    "log_path",
    "public_key",
    "anchor_text",
    "verify_audit",
    "ShownRecords",
    "show_records",
    "REPORT_FORMATS",
    "RenderedReport",
    "report_from_log",
    "job_places",
    "verified_log",
    "generate_keys",
    "ModuleSignature",
    "sign_module",
    "verify_module",
]

MANIFEST_SUFFIXES = (".yaml", ".yml")


def expand_paths(paths: Iterable[Path]) -> list[tuple[Path, bool]]:
    """``(file, named)`` pairs: files as given (``named``), folders searched recursively for
    ``*.yaml``/``*.yml``, in a stable order."""
    found: dict[Path, bool] = {}
    problems: list[Violation] = []
    for path in paths:
        try:  # is_dir/is_file raise for some errors (a name too long: a plan names any string)
            folder, file = path.is_dir(), path.is_file()
        except OSError as exc:
            problems.append(Violation("input.read", f"cannot read: {exc.strerror}", Location(file=str(path))))
            continue
        if folder:
            for file_path in sorted(
                p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file()
            ):
                found.setdefault(file_path, False)
        elif file:
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
    from runner.fileio import read_regular
    from runner.schema import validate

    try:
        raw = read_regular(path, MAX_DOCUMENT_BYTES + 1)  # never blocks on a FIFO a link names
    except OSError as exc:
        where = Location(file=str(path))
        return None, [Violation("yaml.read", f"cannot read the file: {exc.strerror}", where)]
    try:
        document = load_yaml_bytes(raw, str(path))
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
        raw = _read_plan(path)
        plan = Plan.from_dict(json.loads(raw))
        canonical = plan.to_json()  # TypeError: a float where a string belongs (fields are not typed)
    except OSError as exc:
        raise InputError.one(
            "input.read", f"cannot read plan: {exc.strerror}", Location(file=str(path))
        ) from None
    # RecursionError: JSON nested deeper than the interpreter's stack ("[[[[...")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InputError.one(
            "plan.invalid", f"not a valid sandrun plan: {exc}", Location(file=str(path))
        ) from None
    if canonical != raw.rstrip(b"\n"):
        raise InputError.one(
            "plan.invalid",
            "the plan is not in canonical form (edited by hand?); compile it again",
            Location(file=str(path)),
        )
    global _loaded
    _loaded = (plan, sha256_hex(canonical))
    return plan


#: The plan :func:`load_plan` returned last and the sha256 of the canonical bytes it checked it
#: against. A plan is immutable (frozen dataclasses of tuples), so for that very object the digest
#: cannot change; encoding a 2,000-job plan again costs tens of ms of every run and every shard.
_loaded: tuple[Plan, str] | None = None


#: Far above any real plan (a 2,000-job plan is ~2 MB): a plan file larger than this is refused unread.
MAX_PLAN_BYTES = 256 << 20


def _read_plan(path: Path) -> bytes:
    """A plan file's bytes: a regular file of at most :data:`MAX_PLAN_BYTES` (a plan committed as a
    link to ``/dev/zero`` or ``/dev/stdin`` would fill memory or block); ``OSError`` otherwise."""
    from runner.fileio import read_regular

    raw = read_regular(path, MAX_PLAN_BYTES + 1)
    if len(raw) > MAX_PLAN_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_PLAN_BYTES} bytes", str(path))
    return raw


def plan_sha256(plan: Plan) -> str:
    """``plan.sha256``, without encoding ``plan`` again when it is the one :func:`load_plan` just
    read: that file's bytes were compared with its canonical encoding, so they hash the same."""
    loaded = _loaded
    if loaded is not None and loaded[0] is plan:
        return loaded[1]
    return plan.sha256


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


def _denial_records(error: SandrunError) -> list[tuple[str, dict[str, Any]]]:
    """Audit records for a compile-time denial: one per denied tool, then the run's denial."""
    from runner.audit import record

    records: list[tuple[str, dict[str, Any]]] = []
    for violation in error.violations:
        location = violation.location
        if location is not None and location.pointer.startswith("/tools/"):
            pointer = location.pointer
            revoked = violation.rule_id in ("tool.revoked", "signature.revoked-key")
            kind = record.TOOL_REVOKED if revoked else record.TOOL_DENIED
            tool = pointer.split("/")[2]
            records.append(
                (kind, record.tool_refused(tool, location.file, violation.rule_id, violation.message))
            )
    records.append(
        (record.RUN_DENIED, record.run_denied(error.exit_code, [v.to_dict() for v in error.violations]))
    )
    return records


def _seal_denied(
    log: AuditLog, error: SandrunError, out_dir: Path, signing_key: PrivateKey | None, key_name: str | None
) -> None:
    """Log a refused run (its denial records), seal it and publish its checkpoint like any run."""
    from runner.fileio import write_atomic

    for kind, data in _denial_records(error):
        log.append(kind, data)
    denied = log.seal(signing_key, key_name)
    write_atomic(out_dir / "checkpoint.txt", str(denied).encode("utf-8"))


def _log_tools(log: AuditLog, plan: Plan) -> None:
    """``tool.registered`` for every tool of the plan, then ``tool.versioned`` for those that changed."""
    from runner.audit import record

    tools = [record.tool_registered(tool) for tool in plan.tools]
    for data in tools:
        log.append(record.TOOL_REGISTERED, data)
    for data in log.versioned_tools(tools):
        log.append(record.TOOL_VERSIONED, data)


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
    from runner.audit import AuditLog, record
    from runner.executor import BatchOptions as _BatchOptions
    from runner.executor import run_plan
    from runner.fileio import write_atomic
    from runner.outputs import LogFolder, prepare_out_dir, remove_outputs, unsealed_on_failure, write_outputs
    from runner.report import build_report

    root = resolve_root(root)
    options = options or _BatchOptions()
    run_id = new_run_id()
    prepare_out_dir(out_dir)
    with (
        AuditLog.open(
            out_dir,
            run_id=run_id,
            continue_unsealed=continue_unsealed,
            signer=None if signing_key is None else signing_key.public_key(),
        ) as log,
        unsealed_on_failure(log, out_dir),
    ):
        remove_outputs(out_dir)  # under the log's lock, before anything of this run is written
        log.append(record.RUN_STARTED, record.run_started(__version__, sources))
        if options.isolation == "workers":
            from runner.worker import start_forkserver_early

            start_forkserver_early()  # it starts while the plan is read and checked (each shard does it)
        try:
            plan = make_plan()
        except SandrunError as error:
            _seal_denied(log, error, out_dir, signing_key, signing_key_name)
            raise
        digest = plan_sha256(plan)  # hashing a big plan costs: once per run, none for a loaded one
        log.append(
            record.PLAN_COMPILED,
            record.plan_compiled(plan, digest, None if operator_policy is None else str(operator_policy)),
        )
        if shard is not None:
            from runner.shard import SHARD_ASSIGNED

            assignment = shard.assign(plan, digest)
            log.append(SHARD_ASSIGNED, assignment.record())
            plan = assignment.plan
        _log_tools(log, plan)
        # No rw mount may write the log, the reports, or the policy the next run compiles under.
        protected = tuple(p.resolve() for p in (out_dir, root / plan.policy.path, *options.protected_dirs))
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
                run_id=run_id, plan_sha256=digest, policy=plan.policy.name, results=batch.results
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

    1. the policy the plan names must lie inside the root (``plan.policy-outside-root``, exit 3), and
       so must its manifests (``plan.manifest-outside-root``, exit 3);
    2. ``policy_path`` (``run --policy``) decides: it must be the very file the plan was compiled
       under, same path and sha256 (``plan.policy-mismatch``, exit 3);
    3. recompiling the plan's manifests under it must give the same bytes, so an edited plan, a
       changed input or a key that has since expired is refused (``plan.mismatch``, exit 3).

    The file is never rebuilt into a plan on the way: (3) compares its bytes with the canonical
    encoding of the fresh compile, and the plan returned is the compiler's own (valid by
    construction; the whole plan, which a shard partitions). Only a refused file is read in full
    (:func:`load_plan`), so damage anywhere in it is still invalid input before any denial.
    """
    try:
        return _verified(path, policy_path, root=root, today=today)
    except SandrunError:
        load_plan(path)  # a plan damaged anywhere is invalid input (plan.invalid, exit 2) first
        raise


def _verified(path: Path, policy_path: Path, *, root: Path | None, today: dt.date | None) -> Plan:
    """:func:`verified_plan`'s three checks, on the file's bytes (never rebuilt into a plan)."""
    import json

    where = Location(file=str(path))
    try:
        raw = _read_plan(path)
        data = json.loads(raw)
        claimed, manifests = PolicyRef(**data["policy"]), data["manifests"]
        if not isinstance(manifests, list) or not all(isinstance(m, str) for m in manifests):
            raise TypeError("manifests is not a list of paths")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:  # load_plan says why
        raise InputError.one("plan.invalid", f"not a valid sandrun plan: {exc}", where) from None
    base = resolve_root(root)
    at_policy = replace(where, pointer="/policy/path")
    try:
        named: Path | None = (base / claimed.path).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        named = None  # no file at all, let alone one inside the root
    # (1) the plan's policy is inside the root
    if named is None or not named.is_relative_to(base):
        raise PolicyDenied.one(
            "plan.policy-outside-root",
            f"the plan names the policy {claimed.path!r}, outside the root {base}; a plan never "
            "picks its own policy: compile it under a policy inside the root",
            at_policy,
        )
    # (1b) so are its manifests: the recompile reads them, and echoes their content in its errors
    _refuse_manifests_outside(base, manifests, where)
    # (2) the operator's policy is the one the plan was compiled under
    operator = load_policy(policy_path, base)
    if Path(operator.path).resolve() != named or operator.document.sha256 != claimed.sha256:
        raise PolicyDenied.one(
            "plan.policy-mismatch",
            f"the plan was compiled under {claimed.path} (sha256 {claimed.sha256[:12]}), "
            f"not under the policy you named, {policy_path} (sha256 {operator.document.sha256[:12]}); "
            "compile it under that policy",
            at_policy,
            expected=operator.document.sha256,
            actual=claimed.sha256,
        )
    # (3) the plan is, byte for byte, what its inputs compile to now under that policy
    again = compile_manifests([base / m for m in manifests], policy_path, root=base, today=today)
    canonical, content = again.to_json(), raw.rstrip(b"\n")
    if canonical != content:
        raise PolicyDenied.one(
            "plan.mismatch",
            f"the plan (sha256 {sha256_hex(content)[:12]}) does not match what its manifests "
            f"and policy compile to now ({sha256_hex(canonical)[:12]}): it was edited or its inputs "
            "changed; compile it again",
            where,
        )
    global _loaded
    _loaded = (again, sha256_hex(canonical))
    return again


def _inside(base: Path, name: str) -> bool:
    """Whether ``name`` (relative, as a plan or a log names files) resolves inside ``base``."""
    try:
        return (base / name).resolve().is_relative_to(base)
    except (OSError, RuntimeError, ValueError):  # a symlink loop (Python < 3.13), a NUL
        return False


def _refuse_manifests_outside(base: Path, manifests: list[str], where: Location) -> None:
    """A plan naming a manifest outside the root (``/home/u/.config/gh/hosts.yml``, ``../..``, a
    symlink) is refused before anything reads it: the plan's author would pick a host file that the
    recompile reads and whose fields and values its error lines print (to a public CI log)."""
    for index, text in enumerate(manifests):
        if not _inside(base, text):
            raise PolicyDenied.one(
                "plan.manifest-outside-root",
                f"the plan names the manifest {text!r}, outside the root {base}; a plan never "
                "picks files outside the root: compile it from manifests inside the root",
                replace(where, pointer=f"/manifests/{index}"),
            )


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
    """The strict default policy (``policies/default.yaml``), shipped inside the package too (a
    file beside this module: ``importlib.resources`` would cost ~10 ms of every ``exec``)."""
    return Path(__file__).with_name("data") / "default-policy.yaml"


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
    work_dir: str | None = None,
) -> Document:
    """The one-job manifest ``sandrun exec`` runs, built from its flags and checked like any other.

    It goes through the same strict loader and schema (JSON is YAML), so a bad flag value is
    reported exactly as the same mistake in a manifest file would be.
    """
    import hashlib

    from runner.catalog import PREFIX
    from runner.source import load_yaml_bytes

    tool_spec: dict[str, str] = {"module": str(module)}
    if str(module).startswith(PREFIX):  # the compiler looks the name up; the package pins the digest
        stem = str(module)[len(PREFIX) :]
    else:
        try:
            tool_spec["sha256"] = hashlib.sha256(module.read_bytes()).hexdigest()
        except OSError as exc:
            raise InputError.one(
                "input.read", f"cannot read module: {exc.strerror}", Location(file=str(module))
            ) from None
        stem = module.stem
    tool = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:60] or "tool"
    job: dict[str, Any] = {"name": "exec", "tool": tool, "args": list(args)}
    if program_name is not None:
        job["program_name"] = program_name
    if invoke is not None:
        job["invoke"] = invoke
    if work_dir is not None:
        job["work_dir"] = work_dir
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
        "tools": {tool: tool_spec},
        "jobs": [job],
    }
    from runner.schema import validate

    document = load_yaml_bytes(_json_for_yaml(manifest), "(sandrun exec)")
    # no line of it was written by the user: a problem names the field only, not a line and column
    document = replace(document, spans={}, key_spans={})
    problems = validate(document, "manifest")
    if problems:
        raise InputError(violations=tuple(problems))
    return document


# -- reading logs: verify, show, report -------------------------------------------------------


def log_path(path: Path) -> Path:
    """An output folder's ``audit.jsonl``, or the log file named."""
    from runner.audit import LOG_NAME

    return path / LOG_NAME if path.is_dir() else path


def public_key(text: str) -> PublicKey:
    """A public key given as a file or as its text (base64 or PEM); a bad one is invalid input."""
    from runner.signing import KeyFileError, parse_public_key

    path = Path(text)
    try:
        return parse_public_key(path.read_text(encoding="ascii") if path.is_file() else text)
    except KeyFileError as exc:
        raise InputError.one(exc.rule_id or "keys.invalid", f"public key {text}: {exc}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError.one("keys.invalid", f"public key {text}: {exc}") from None


def anchor_text(expect_head: str | None) -> str | None:
    """``--expect-head``: a checkpoint file's text, or the text given (a note or a root hash)."""
    if expect_head is None or not Path(expect_head).is_file():
        return expect_head
    try:
        return Path(expect_head).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError.one(
            "input.read", f"cannot read the checkpoint: {exc}", Location(file=expect_head)
        ) from None


def verify_audit(
    path: Path, *, public_keys: Sequence[str] = (), expect_head: str | None = None, strict: bool = False
) -> VerifyReport:
    """``sandrun audit verify``: the log checked offline (its problems are in the report, not raised)."""
    from runner.audit.merge import verify_merged
    from runner.audit.verify import verify_read

    keys = [public_key(text) for text in public_keys]
    report, lines = verify_read(
        log_path(path), public_keys=keys, expect_head=anchor_text(expect_head), strict=strict
    )
    return verify_merged(report, lines, keys)  # a merged log: each shard's own log too


def verified_log(
    path: Path, public_keys: Sequence[str], expect_head: str | None
) -> tuple[VerifyReport, list[dict[str, Any]]]:
    """Verify the log before reading it (``AuditError``, exit 4, for a damaged or untrusted one)."""
    from runner.audit import verified_records

    keys = [public_key(text) for text in public_keys]
    return verified_records(log_path(path), public_keys=keys, expect_head=anchor_text(expect_head))


@dataclass(frozen=True, slots=True, kw_only=True)
class ShownRecords:
    """What ``audit show`` prints: the records (each with whether a seal covers its run), the
    verification line, and whether any shown record belongs to the last run when it is unsealed."""

    records: list[tuple[dict[str, Any], bool]]
    verification: str
    shows_unsealed_tail: bool


def show_records(
    path: Path,
    *,
    job: str | None = None,
    kind: str | None = None,
    run: str | None = None,
    public_keys: Sequence[str] = (),
    expect_head: str | None = None,
) -> ShownRecords:
    """``sandrun audit show``: the verified log's records that match every filter given.

    A filter that matches nothing is invalid input (``input.no-match``, exit 2): a misspelt job or
    run id must not read as "nothing happened".
    """
    from runner.audit import select, verification_line

    verification, records = verified_log(path, public_keys, expect_head)
    unsealed = {r.run for r in verification.runs if not r.sealed}
    runs = verification.runs
    uncovered = runs[-1].run if runs and not runs[-1].sealed else None  # after the last seal
    chosen = select(records, job=job, kind=kind, run=run)
    if not chosen and (job, kind, run) != (None, None, None):
        given = " ".join(
            f"--{name} {value}" for name, value in (("job", job), ("kind", kind), ("run", run)) if value
        )
        raise InputError.one(
            "input.no-match",
            f"no record matched {given} ({verification_line(verification)})",
            Location(file=str(log_path(path))),
        )
    return ShownRecords(
        records=[(r, r["run"] not in unsealed) for r in chosen],
        verification=verification_line(verification),
        shows_unsealed_tail=any(r["run"] == uncovered for r in chosen),
    )


REPORT_FORMATS = ("json", "junit", "md", "html", "github")


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedReport:
    """A run's report rebuilt from its log, in one format, and the verification line it rests on."""

    text: str
    verification: str


def report_from_log(
    path: Path,
    *,
    fmt: str = "md",
    run: str | None = None,
    public_keys: Sequence[str] = (),
    expect_head: str | None = None,
    output: Path | None = None,
    root: Path | None = None,
) -> RenderedReport:
    """``sandrun report``: a sealed run's report rebuilt from the verified log alone.

    An unknown ``run`` is invalid input (``input.run``, exit 2); a run without a seal has no
    verified results (``audit.unsealed``, exit 4). Log links (JUnit, HTML) are to the output
    folder's ``logs/`` files that hold exactly this run's bytes, relative to ``output`` (or to the
    current folder); GitHub annotations point at the manifests under ``root`` (docs/reports.md).
    """
    from runner.audit import verification_line
    from runner.audit.query import granted_limits, results_from_log, run_plan_info
    from runner.outputs import captured_logs
    from runner.report import RunInfo, render_github, render_html, render_json, render_junit, render_markdown

    if fmt not in REPORT_FORMATS:
        raise InputError.one("input.format", f"no report format {fmt!r}; one of {', '.join(REPORT_FORMATS)}")
    verification, records = verified_log(path, public_keys, expect_head)
    log = log_path(path)
    chosen = run or (verification.runs[-1].run if verification.runs else None)
    summary = next((r for r in verification.runs if r.run == chosen), None)
    if summary is None:
        raise InputError.one("input.run", f"no run {chosen} in the log", Location(file=str(log)))
    line = verification_line(verification, summary)
    if not summary.sealed:
        raise AuditError.one(
            "audit.unsealed",
            f"run {summary.run} has no seal (it was killed, or its disk filled, before its results were "
            "sealed): there is no verified result to report",
            Location(file=str(log), line=summary.first_line),
        )
    data = results_from_log(records, summary.run)
    logs = captured_logs(log.parent, data, link_from=(output.parent if output else Path.cwd()).absolute())
    if fmt == "html":
        date, plan = run_plan_info(records, summary.run)
        policy = plan.policy
        info = None if policy is None else RunInfo(date, policy.name, policy.path, policy.sha256)
        limits = granted_limits(records, summary.run)
        text = render_html(data, limits=limits, verification=line, run_info=info, logs=logs)
    elif fmt == "junit":
        text = render_junit(data, logs=logs)
    elif fmt == "github":
        _, plan = run_plan_info(records, summary.run)
        text = render_github(data, places=job_places(plan.inputs, root=root))
    else:
        text = {"json": render_json, "md": render_markdown}[fmt](data)
    return RenderedReport(text=text, verification=line)


def _regular_file_under(base: Path, name: str) -> bool:
    """Whether ``name`` (relative, as a plan lists its inputs) is a regular file inside ``base``."""
    try:
        return _inside(base, name) and (base / name).is_file()
    except OSError:
        return False


def job_places(inputs: Mapping[str, str], *, root: Path | None = None) -> dict[str, JobPlace]:
    """Where each job is written (manifest file, line of its entry), for annotations: read from the
    manifests among ``inputs`` (path -> sha256, as a plan lists them) that are still those bytes. A
    changed, missing or unparsable file gives no place rather than a wrong one."""
    from runner.report import JobPlace

    base = (root or Path.cwd()).resolve()
    places: dict[str, JobPlace] = {}
    for name, digest in inputs.items():
        # the names come from a log, which anyone may have written: only regular files under the
        # root are read (a FIFO there made `report --format github` wait forever)
        if not name.endswith(MANIFEST_SUFFIXES) or not _regular_file_under(base, name):
            continue
        try:
            document = load_yaml_file(base / name, display=name)
        except (InputError, OSError):
            continue
        data = document.data
        metadata = data.get("metadata")
        jobs = data.get("jobs")
        if document.sha256 != digest or data.get("kind") != "Manifest" or not isinstance(metadata, dict):
            continue
        for index, job in enumerate(jobs if isinstance(jobs, list) else ()):
            if isinstance(job, dict) and isinstance(job.get("name"), str):
                where = document.locate(f"/jobs/{index}")
                places[f"{metadata.get('name')}/{job['name']}"] = JobPlace(name, where.line)
    return places


# -- keys and module signatures ---------------------------------------------------------------


def generate_keys(key_id: str, out_dir: Path) -> KeyPair:
    """``sandrun keys generate``: ``OUT/ID.key`` (private, 0600) and ``OUT/ID.pub``."""
    from runner.signing import KeyFileError, write_keypair

    try:
        return write_keypair(key_id, out_dir)
    except KeyFileError as exc:
        raise InputError.one("keys.generate", str(exc)) from None


def _module_digest(module: Path) -> str:
    import hashlib

    try:
        return hashlib.sha256(module.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError.one(
            "input.read", f"cannot read module: {exc.strerror}", Location(file=str(module))
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleSignature:
    """A module's digest and its signature by ``key_id``: what a manifest's tool entry holds."""

    sha256: str
    key_id: str
    signature: str


def sign_module(module: Path, key_path: Path, key_id: str | None = None) -> ModuleSignature:
    """``sandrun sign``: sign a module's digest with a private key file (key id: the file's stem)."""
    from runner.signing import KeyFileError, load_private_key, sign_module_digest

    digest = _module_digest(module)
    try:
        key = load_private_key(key_path)
    except KeyFileError as exc:
        raise InputError.one(exc.rule_id or "keys.invalid", str(exc), Location(file=str(key_path))) from None
    return ModuleSignature(
        sha256=digest, key_id=key_id or key_path.stem, signature=sign_module_digest(key, digest)
    )


def verify_module(module: Path, signature: str, public: str) -> str:
    """``sandrun verify``: the module's digest when ``signature`` verifies under ``public`` (a file
    or its text); ``signature.invalid`` (exit 3) when it does not."""
    from runner.signing import verify_module_digest

    digest = _module_digest(module)
    if not verify_module_digest(public_key(public), digest, signature):
        raise PolicyDenied.one(
            "signature.invalid",
            f"the signature does not verify for sha256 {digest}",
            Location(file=str(module)),
        )
    return digest


def serve(
    make_plan: Callable[[], Plan],
    options: Any,
    *,
    root: Path | None = None,
    out_dir: Path = Path("sandrun-out"),
    signing_key: PrivateKey | None = None,
    signing_key_name: str | None = None,
    sources: Sequence[str] = (),
    operator_policy: Path | None = None,
    on_ready: Callable[[Any], None] | None = None,
    continue_unsealed: bool = False,
) -> tuple[Any, Checkpoint]:
    """``sandrun serve``: the plan's routed jobs answer HTTP until SIGTERM, every request logged.

    The plan is made first: a denied one never serves (nothing is logged, as with ``check``). The
    log gets the run's opening records, one ``request.served`` record per request, and is sealed
    once the server has drained. ``options`` is a :class:`runner.serve.ServeOptions`. Returns the
    stopped :class:`runner.serve.Service` and the seal's checkpoint. The log's failures are
    handled as in :func:`run` (``continue_unsealed``, ``audit.write-failed``).
    """
    from runner import serve as serving
    from runner.audit import AuditLog, record
    from runner.fileio import write_atomic
    from runner.outputs import prepare_out_dir, remove_outputs, unsealed_on_failure

    root = resolve_root(root)
    plan = make_plan()
    prepare_out_dir(out_dir)
    with (
        AuditLog.open(
            out_dir,
            run_id=new_run_id(),
            continue_unsealed=continue_unsealed,
            signer=None if signing_key is None else signing_key.public_key(),
        ) as log,
        unsealed_on_failure(log, out_dir),
    ):
        remove_outputs(out_dir)  # the reports there describe an earlier run; this one writes none
        log.append(record.RUN_STARTED, {**record.run_started(__version__, sources), "mode": "serve"})
        log.append(
            record.PLAN_COMPILED,
            record.plan_compiled(
                plan, plan.sha256, None if operator_policy is None else str(operator_policy)
            ),
        )
        _log_tools(log, plan)
        try:
            service = serving.serve(
                plan, root=root, log=log, options=options, on_ready=on_ready or (lambda service: None)
            )
        except SandrunError as error:  # nothing served (a port in use, a module that fails): refused
            _seal_denied(log, error, out_dir, signing_key, signing_key_name)
            raise
        checkpoint = log.seal(signing_key, signing_key_name)
        write_atomic(out_dir / "checkpoint.txt", str(checkpoint).encode("utf-8"))
    return service, checkpoint


#: How many ``sandrun exec`` run folders the per-user state folder keeps (the newest).
EXEC_RUNS_KEPT = 32


def exec_out_dir(environ: Mapping[str, str]) -> Path:
    """A new folder for one ``sandrun exec`` run when no ``--out`` is given, so nothing is left in
    the current folder: ``$XDG_STATE_HOME/sandrun/exec/<time>-<pid>`` (else ``~/.local/state``),
    private to the user; only the newest :data:`EXEC_RUNS_KEPT` are kept
    (:func:`runner.outputs.new_exec_run_dir`)."""
    from runner.outputs import new_exec_run_dir

    base = Path(environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "sandrun" / "exec"
    return new_exec_run_dir(base, keep=EXEC_RUNS_KEPT)
