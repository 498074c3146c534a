"""The ``sandrun`` command line: flags to api calls, and the one place errors become exit codes.

Only this module imports ``click``. Heavy modules (wasmtime, jsonschema, cryptography) are imported
inside the commands that need them, so ``sandrun --help`` starts fast. Every
:class:`~runner.errors.SandrunError` is caught once, in :func:`main`, printed one line per problem,
and mapped to its documented exit code; no input ever produces a traceback (set
``SANDRUN_DEBUG=1`` to see one for a bug).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import json
import os
import posixpath
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from runner import __version__
from runner.errors import (
    EXIT_AUDIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    AuditError,
    InputError,
    Location,
    SandrunError,
    Violation,
    printable,
)

__all__ = ["main", "cli"]

EXIT_INTERNAL = 70

# One instance of each path type, shared by every option (a type holds only its settings): each
# ``click.Path()`` asks gettext for its name, which stats locale files (~0.1 ms a time, 41 options).
_ANY_PATH = click.Path(path_type=Path)
_FILE = click.Path(path_type=Path, dir_okay=False)
_FOLDER = click.Path(path_type=Path, file_okay=False)

_policy_option = click.option(
    "--policy", "policy_path", type=_ANY_PATH, required=True, help="The policy file."
)
_root_option = click.option(
    "--root",
    type=_FOLDER,
    default=None,
    help="Folder that policy roots and plan paths are relative to (default: the current folder).",
)
_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="How problems are printed; github prints ::error annotations.",
)


_FMT = "sandrun.format"  # key in click's context meta: how this invocation prints its problems


def _set_format(fmt: str) -> None:
    """Remember the command's ``--format`` for the error printer, in this invocation's context
    only (never in module or class state: in-process callers run several commands)."""
    click.get_current_context().meta[_FMT] = fmt


def render_violation(violation: Violation, fmt: str) -> str:
    """One line; with ``github`` the only line that may start with ``::``, a real annotation whose
    parts are neutralised and escaped as GitHub requires (``report.github_annotation``)."""
    if fmt != "github":
        return violation.render()
    from runner.report import github_annotation

    location = violation.location
    pointer = f"{printable(location.pointer)}: " if location is not None and location.pointer else ""
    return github_annotation(
        pointer + printable(" ".join(violation.message.split())),  # one line, as in text
        title=violation.rule_id,
        file=None if location is None else location.file,
        line=None if location is None else location.line,
        column=None if location is None else location.column,
    )


def _say(text: str, *, err: bool = False) -> None:
    """Print one line that holds input (names, paths, reasons), neutralised (runner.textsafe)."""
    from runner.textsafe import safe_line

    click.echo(safe_line(text), err=err)


@contextlib.contextmanager
def _reader_may_leave() -> Iterator[None]:
    """Output nobody reads any more (``sandrun check … | head -1``) is dropped quietly.

    The reader closing the pipe is not an error of the command: the rest of its output goes to
    ``/dev/null`` and it ends with the exit code it was going to have anyway.
    """
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _report_error(error: SandrunError, fmt: str) -> None:
    with _reader_may_leave():
        _print_error(error, fmt)


def _print_error(error: SandrunError, fmt: str) -> None:
    if fmt == "sarif":
        from runner.sarif import render_sarif

        click.echo(render_sarif(error.violations, root=Path.cwd()), nl=False)
        return
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "ok": False,
                    "exit_code": error.exit_code,
                    "violations": [v.to_dict() for v in error.violations],
                },
                indent=2,
            )
        )
        return
    for violation in error.violations:
        click.echo(render_violation(violation, fmt), err=fmt != "github")


class _SandrunGroup(click.Group):
    """The root group: the one place where errors become messages and exit codes."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SandrunError as error:
            _report_error(error, ctx.meta.get(_FMT, "text"))
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except click.ClickException as exc:  # a flag's value is input too: echoed neutralised
            from runner.textsafe import safe_line

            exc.message = safe_line(exc.message)  # type: ignore[misc]  # Final in stubs only
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # the reader has all it wanted (`| head -1`): not a failure
            with _reader_may_leave():
                raise
        except OSError as exc:  # the machine's side: an unwritable --out, a full disk
            where = f"{exc.filename}: " if exc.filename else ""
            _say(f"sandrun: {where}{exc.strerror or exc}", err=True)
            ctx.exit(EXIT_INVALID_INPUT)
        except Exception as exc:  # a bug: one line, never a traceback, unless asked for
            if os.environ.get("SANDRUN_DEBUG"):
                traceback.print_exc()
            _say(
                f"sandrun: internal error: {type(exc).__name__}: {exc} "
                "(set SANDRUN_DEBUG=1 for a traceback; please report it)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)
        return None


@click.group(cls=_SandrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sandrun")
def cli() -> None:
    """Run untrusted WebAssembly tools under a policy, with a verifiable audit log.

    \b
    Exit codes:
      0  success (every job passed, the log verified)
      1  a job failed, was denied at run time or was skipped
      2  invalid input (YAML, schema, file, flag)
      3  policy denial (the manifests break the policy)
      4  audit: the log did not verify, or the run could not keep its record (full disk)
      130 interrupted (Ctrl-C)
    """


def _compile_noting_skips(paths: tuple[Path, ...], policy: Path, root: Path | None) -> Any:
    """``api.compile_manifests``, then one line on stderr counting the YAML files it skipped."""
    from runner.api import compile_manifests

    skipped: list[Path] = []
    try:
        return compile_manifests(list(paths), policy, root=root, on_skip=skipped.append)
    finally:
        if skipped:
            click.echo(
                f"skipped {len(skipped)} YAML file(s) in the folder(s) that are not sandrun manifests "
                "(kind is not Manifest)",
                err=True,
            )


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=_ANY_PATH)
@_policy_option
@_root_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github", "sarif"]),
    default="text",
    show_default=True,
    help="How problems are printed; github prints ::error annotations, sarif a SARIF 2.1.0 log.",
)
def check(paths: tuple[Path, ...], policy_path: Path, root: Path | None, fmt: str) -> None:
    """Check manifests (files or folders) against a policy; report every problem."""
    _set_format(fmt)
    plan = _compile_noting_skips(paths, policy_path, root)
    components = sum(1 for tool in plan.tools if tool.kind == "component")
    if fmt == "sarif":
        from runner.sarif import render_sarif

        click.echo(render_sarif([], root=Path.cwd()), nl=False)
    elif fmt == "json":
        click.echo(
            json.dumps(
                {
                    "ok": True,
                    "plan_sha256": plan.sha256,
                    "jobs": len(plan.jobs),
                    "tools": len(plan.tools),
                    "components": components,
                },
                indent=2,
            )
        )
    else:
        manifests = len({job.manifest for job in plan.jobs})
        _say(
            f"ok: {manifests} manifest(s), {len(plan.tools)} tool(s)"
            + (f" ({components} component(s))" if components else "")
            + f", {len(plan.jobs)} job(s) "
            f"allowed by policy {plan.policy.name!r}; plan sha256 {plan.sha256}"
        )


@cli.command(name="compile")
@click.argument("paths", nargs=-1, required=True, type=_ANY_PATH)
@_policy_option
@_root_option
@click.option(
    "-o",
    "--output",
    type=_FILE,
    default=Path("plan.json"),
    show_default=True,
    help="Where to write the plan (- for stdout).",
)
@_format_option
def compile_command(
    paths: tuple[Path, ...], policy_path: Path, root: Path | None, output: Path, fmt: str
) -> None:
    """Compile manifests and a policy into a plan (canonical JSON)."""
    from runner.fileio import write_atomic

    _set_format(fmt)
    plan = _compile_noting_skips(paths, policy_path, root)
    data = plan.to_json() + b"\n"
    if str(output) == "-":
        click.echo(data.decode("utf-8"), nl=False)
    else:
        write_atomic(output, data)
        _say(f"wrote {output}: {len(plan.jobs)} job(s), plan sha256 {plan.sha256}", err=True)


@cli.command()
@click.argument("kind", type=click.Choice(["manifest", "policy"]))
def schema(kind: str) -> None:
    """Print the JSON Schema of a manifest or a policy (for editors and CI linters)."""
    from runner.schema import schema_text

    click.echo(schema_text(kind), nl=False)  # type: ignore[arg-type]


_out_option = click.option(
    "--out",
    "out_dir",
    type=_FOLDER,
    default=Path("sandrun-out"),
    show_default=True,
    help="Folder for audit.jsonl, report.json, junit.xml, summary.md, logs/.",
)
_signing_options = [
    click.option(
        "--signing-key",
        type=_FILE,
        default=None,
        help="Ed25519 private key that signs the audit seal (or set SANDRUN_SIGNING_KEY to its PEM).",
    ),
    click.option("--key-name", default=None, help="Name of the signing key in the signed checkpoint."),
]
_cache_option = [
    click.option(
        "--cache-dir",
        type=_FOLDER,
        default=None,
        help="Compiled-module cache (default: $XDG_CACHE_HOME/sandrun/modules).",
    ),
]


def _apply(options: list) -> Callable:  # type: ignore[type-arg]
    def decorate(function: Callable) -> Callable:  # type: ignore[type-arg]
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


_continue_option = click.option(
    "--continue-unsealed",
    is_flag=True,
    help="Append to a log whose last run has no seal (killed, or cut back after a full disk); "
    "the log records it (run.continued).",
)
_run_options = [_root_option, _out_option, *_cache_option, *_signing_options, _continue_option]


def _signing_key(path: Path | None) -> Any:
    from runner.audit import load_runner_key
    from runner.keyguard import shield_process

    key = load_runner_key(path, os.environ)
    if key is not None:  # no other process of the user may read it out of this one
        shield_process()
    return key


def _start_run(
    make_plan: Callable[[], Any],
    *,
    root: Path | None,
    out_dir: Path,
    options: Any,
    signing_key: Path | None,
    key_name: str | None,
    sources: list[str],
    progress: bool,
    operator_policy: Path | None = None,
    continue_unsealed: bool = False,
    shard: Any = None,
) -> Any:
    """``api.run`` with the runner's key, a progress display, and Ctrl-C turned into a clean stop.

    The first Ctrl-C or SIGTERM (what CI systems and Kubernetes send on cancel) sets the batch's
    cancel event: running jobs are interrupted, results so far are written and the log is sealed
    (exit 130); a second one of the same signal stops at once.
    """
    import signal

    from runner.api import run
    from runner.progress import make_progress

    key = _signing_key(signing_key)
    if signing_key is not None:  # no job may mount the folder holding the runner's key
        from dataclasses import replace

        options = replace(options, secret_files=(*options.secret_files, signing_key))
    cancel = threading.Event()
    display = make_progress() if progress else None
    stops = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, Any] = {stop: signal.getsignal(stop) for stop in stops}

    def interrupt(signum: int, frame: object) -> None:
        cancel.set()
        signal.signal(signum, previous[signum])

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for stop in stops:
            signal.signal(stop, interrupt)
    try:
        return run(
            make_plan,
            root=root,
            out_dir=out_dir,
            options=options,
            signing_key=key,
            signing_key_name=key_name,
            cancel=cancel,
            on_progress=display,
            sources=sources,
            operator_policy=operator_policy,
            continue_unsealed=continue_unsealed,
            shard=shard,
        )
    finally:
        if display is not None:
            display.close()
        if in_main:
            for number, handler in previous.items():
                signal.signal(number, handler)


def _print_run_end(outcome: Any) -> None:
    from runner.report import render_markdown

    click.echo(render_markdown(outcome.report), nl=False)
    checkpoint = outcome.checkpoint
    _say(f"outputs: {outcome.out_dir}/ (report.json, junit.xml, summary.md, logs/, audit.jsonl)", err=True)
    _say(
        f"audit head: {checkpoint.chain_head} after {checkpoint.size} records; publish "
        f"{outcome.out_dir}/checkpoint.txt outside the log to anchor it",
        err=True,
    )


@cli.command(name="run")
@click.argument("sources", nargs=-1, required=True, type=_ANY_PATH)
@click.option(
    "--policy",
    "policy_path",
    type=_ANY_PATH,
    default=None,
    help="The policy that decides (required; a plan.json must have been compiled under it).",
)
@click.option(
    "-j", "--jobs", type=click.IntRange(min=1), default=None, help="Parallel jobs (default: cores)."
)
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed job (default: run everything).")
@click.option(
    "--shard",
    "shard_text",
    default=None,
    metavar="I/N|auto[/N]",
    help="Run only shard I of N (1-based); auto reads CI_NODE_INDEX/CI_NODE_TOTAL or JOB_COMPLETION_INDEX.",
)
@click.option(
    "--durations",
    type=_FILE,
    default=None,
    help="A previous report.json: balance the shards by its wall_ms.",
)
@click.option("--dry-run", is_flag=True, help="With --shard: print the assignment, run nothing.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "github"]),
    default="text",
    show_default=True,
    help="github: problems, and each failed or denied job, as ::error annotations.",
)
@_apply(_run_options)
def run_command(
    sources: tuple[Path, ...],
    policy_path: Path | None,
    root: Path | None,
    out_dir: Path,
    jobs: int | None,
    fail_fast: bool,
    shard_text: str | None,
    durations: Path | None,
    dry_run: bool,
    cache_dir: Path | None,
    signing_key: Path | None,
    key_name: str | None,
    continue_unsealed: bool,
    fmt: str,
) -> None:
    """Run manifests, or one compiled plan, under --policy; write outputs and the audit log."""
    from runner.api import plan_maker
    from runner.executor import BatchOptions

    _set_format(fmt)
    make_plan = plan_maker(list(sources), policy_path, root=root)
    shard = _shard_request(shard_text, durations, dry_run)
    if dry_run and shard is not None:
        from runner.api import plan_sha256
        from runner.shard import describe

        plan = make_plan()
        assignment = shard.assign(plan, plan_sha256(plan))  # the checked file's digest: no re-encoding
        click.echo(describe(assignment, balanced_by=str(durations or "job count")), nl=False)
        return
    decided: list[Any] = []  # the plan that runs, for the summary line and the annotations

    def make_and_note() -> Any:
        plan = make_plan()
        decided.append(plan)
        return plan

    options = BatchOptions(fail_fast=fail_fast, cache_dir=cache_dir, jobs=jobs or os.cpu_count() or 1)
    outcome = _start_run(
        make_and_note,
        root=root,
        out_dir=out_dir,
        options=options,
        signing_key=signing_key,
        key_name=key_name,
        sources=[str(s) for s in sources],
        progress=True,
        operator_policy=policy_path,
        continue_unsealed=continue_unsealed,
        shard=shard,
    )
    with _reader_may_leave():
        _print_run_end(outcome)
        if fmt == "github":
            from runner.api import job_places
            from runner.report import render_github

            inputs = {i.path: i.sha256 for i in decided[0].inputs}
            click.echo(render_github(outcome.report, places=job_places(inputs, root=root)), nl=False)
        policy = decided[0].policy
        _say(f"policy (--policy): {policy.name} ({policy.path}, sha256 {policy.sha256})", err=True)
    sys.exit(outcome.exit_code)


def _shard_request(text: str | None, durations: Path | None, dry_run: bool) -> Any:
    """``--shard``/``--durations``/``--dry-run`` as a ``ShardRequest``, or None for the whole plan."""
    if text is None:
        if durations is not None or dry_run:
            raise InputError.one("shard.invalid", "--durations and --dry-run go with --shard")
        return None
    from runner.shard import ShardRequest, load_durations, parse_shard

    spec = parse_shard(text, os.environ)
    return ShardRequest(spec, None if durations is None else load_durations(durations))


def _parse_map_dir(text: str) -> tuple[str, str, str]:
    host, sep, rest = text.partition("::")
    if not sep or not host or not rest:
        raise click.BadParameter(f"{text!r}: expected HOST::GUEST[:ro|rw]")
    guest, mode = rest, "ro"
    if rest.endswith((":ro", ":rw")):
        guest, mode = rest[:-3], rest[-2:]
    return host, guest, mode


def _parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r}: expected NAME=VALUE")
    return name, value


def _parse_dir(text: str) -> tuple[str, str, str]:
    """``--dir HOST[::GUEST][:ro|rw]`` as ``wasmtime run`` spells it; GUEST defaults to HOST made
    absolute in the guest (``.`` is ``/``), as WASI libc resolves relative paths against it."""
    if "::" in text:
        return _parse_map_dir(text)
    host, mode = text, "ro"
    if text.endswith((":ro", ":rw")):
        host, mode = text[:-3], text[-2:]
    if not host:
        raise click.BadParameter(f"{text!r}: expected HOST[::GUEST]")
    return host, posixpath.normpath("/" + host.lstrip("/")), mode


def _exec_env(entries: tuple[str, ...]) -> dict[str, str]:
    """``--env NAME=VALUE``, or ``--env NAME``: the host's value of NAME, as ``wasmtime run`` passes
    it (a name the host does not have is left out, as there)."""
    env: dict[str, str] = {}
    for text in entries:
        if "=" in text:
            name, value = _parse_env(text)
        elif text in os.environ:
            name, value = text, os.environ[text]
        else:
            continue
        env[name] = value
    return env


EXIT_TRAP = 134


@cli.command(name="exec", context_settings={"allow_interspersed_args": False})
@click.argument("module", type=_FILE)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--dir",
    "dirs",
    multiple=True,
    metavar="HOST[::GUEST][:ro|rw]",
    help="Mount a host folder in the guest, as wasmtime spells it (read-only unless :rw).",
)
@click.option(
    "--map-dir",
    "map_dirs",
    multiple=True,
    metavar="HOST::GUEST[:ro|rw]",
    help="Mount a host folder in the guest (read-only unless :rw).",
)
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="Set a guest environment variable; NAME alone passes the host's value.",
)
@click.option("--fuel", type=click.IntRange(min=1), default=None, help="Meter fuel (off unless asked).")
@click.option("--memory", default=None, help="Linear memory cap, e.g. 64MiB.")
@click.option("--timeout", default=None, help="Wall-clock timeout, e.g. 30s.")
@click.option("--stack", default=None, help="WASM stack cap, e.g. 512KiB.")
@click.option("--output", default=None, help="Cap on captured stdout and stderr each, e.g. 1MiB.")
@click.option(
    "--invoke",
    default=None,
    help="Call an export instead of _start (NAME with ARGS, or a WAVE call: 'add(1, 2)'); print results.",
)
@click.option("--program-name", default=None, help="argv[0] (default: the module's name).")
@click.option(
    "--work-dir",
    default=None,
    metavar="GUEST",
    help="Guest folder relative paths resolve in; inside a --dir mount (docs/exec.md).",
)
@click.option(
    "--policy",
    "policy_path",
    type=_ANY_PATH,
    default=None,
    help="Policy to check against (default: the built-in strict default policy).",
)
@_root_option
@click.option(
    "--out",
    "out_dir",
    type=_FOLDER,
    default=None,
    help="Folder for the run's outputs and audit log (default: a new folder under "
    "$XDG_STATE_HOME/sandrun/exec/, the newest 32 kept).",
)
@_apply([*_cache_option, *_signing_options, _continue_option])
def exec_command(
    module: Path,
    args: tuple[str, ...],
    dirs: tuple[str, ...],
    map_dirs: tuple[str, ...],
    env: tuple[str, ...],
    fuel: int | None,
    memory: str | None,
    timeout: str | None,
    stack: str | None,
    output: str | None,
    invoke: str | None,
    program_name: str | None,
    work_dir: str | None,
    policy_path: Path | None,
    root: Path | None,
    out_dir: Path | None,
    cache_dir: Path | None,
    signing_key: Path | None,
    key_name: str | None,
    continue_unsealed: bool,
) -> None:
    """Run one module ad hoc, like `wasmtime run`, in the same sandbox and audit.

    The module may be anywhere on disk (the digest is pinned); mounts are checked against the
    policy. The guest's stdin, stdout and stderr pass through (and are captured in the logs); the
    exit status is the guest's own, or 134 when it trapped (timeout, fuel, memory, stack, trap).
    """
    from runner.api import compile_documents, default_policy_path, exec_manifest, exec_out_dir
    from runner.executor import BatchOptions
    from runner.worker import drop_spare_worker, fork_spare_worker

    fork_spare_worker(passthrough=True)  # its one worker, forked while this process has one thread
    click.get_current_context().call_on_close(drop_spare_worker)  # a refused job leaves none

    limits = {
        k: v
        for k, v in {
            "fuel": fuel,
            "memory": memory,
            "timeout": timeout,
            "stack": stack,
            "output": output,
        }.items()
        if v is not None
    }
    document = exec_manifest(
        module,
        args,
        mounts=[*(_parse_dir(d) for d in dirs), *(_parse_map_dir(m) for m in map_dirs)],
        env=_exec_env(env),
        limits=limits,
        invoke=invoke,
        program_name=program_name,
        work_dir=work_dir,
    )
    policy = policy_path or default_policy_path()
    options = BatchOptions(jobs=1, passthrough=True, cache_dir=cache_dir)
    outcome = _start_run(
        lambda: compile_documents([document], policy, root=root, named_module=module),
        root=root,
        out_dir=out_dir if out_dir is not None else exec_out_dir(os.environ),
        options=options,
        signing_key=signing_key,
        key_name=key_name,
        sources=[str(module)],
        progress=False,
        operator_policy=policy,
        continue_unsealed=continue_unsealed,
    )
    job = outcome.report["jobs"][0]
    if outcome.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    refused = job["invoke"] if job["invoke"] is not None and "rule" in job["invoke"] else None
    if refused is not None:  # the call was refused before any guest code ran: invalid input
        where = Location(file="(sandrun exec)", pointer="/jobs/0/invoke")
        raise SandrunError.one(refused["rule"], refused["error"], where)
    if job["trap"] is not None:
        _say(f"sandrun exec: {job['reason']}", err=True)
        sys.exit(EXIT_TRAP)
    if job["exit_code"] is None:
        _say(f"sandrun exec: {job['status']}: {job['reason']}", err=True)
        sys.exit(1)
    for value in job["invoke_results"] or ():
        click.echo(value)  # as `wasmtime run --invoke` prints them (docs/invoke.md)
    sys.exit(job["exit_code"])


@cli.command(name="serve")
@click.argument("sources", nargs=-1, required=True, type=_ANY_PATH)
@_policy_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any free port."
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="Guests at once (default: cores)."
)
@click.option("--queue", "queue_size", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--max-body", default="1MiB", show_default=True, help="Largest request body (413 above).")
@_apply(_run_options)
def serve_command(
    sources: tuple[Path, ...],
    policy_path: Path,
    host: str,
    port: int,
    concurrency: int | None,
    queue_size: int,
    max_body: str,
    root: Path | None,
    out_dir: Path,
    cache_dir: Path | None,
    signing_key: Path | None,
    key_name: str | None,
    continue_unsealed: bool,
) -> None:
    """Serve the jobs that have a `route` over HTTP (WAGI-style), one fresh sandbox per request.

    Needs the serve extra (uvicorn and starlette: `-e '.[serve]'`). SIGTERM or Ctrl-C drains the
    requests in flight, then seals the audit log.
    """
    from runner.units import parse_size

    try:
        from runner import serve as serving
    except ImportError as exc:
        raise InputError.one(
            "serve.not-installed",
            f"sandrun serve needs the serve extra, sandrun-wasm[serve] (uvicorn, starlette): {exc}",
        ) from None
    from runner.api import plan_maker, serve

    try:
        body_cap = parse_size(max_body)
    except ValueError as exc:
        raise InputError.one("input.flag", f"--max-body: {exc}") from None
    options = serving.ServeOptions(
        host=host,
        port=port,
        concurrency=concurrency or os.cpu_count() or 1,
        queue=queue_size,
        max_body=body_cap,
        cache_dir=cache_dir,
    )
    if not serving.is_loopback(host):
        click.echo(
            f"sandrun serve: warning: listening on {host}, not loopback: "
            "whoever can reach it runs the routed jobs",
            err=True,
        )

    def ready(service: Any) -> None:
        bound_host, bound_port = service.address
        for prefix, job in service.app.routes:
            click.echo(f"route {prefix} -> {job.id}", err=True)
        click.echo(
            f"serving on http://{bound_host}:{bound_port} (SIGTERM or Ctrl-C drains and seals)", err=True
        )

    service, checkpoint = serve(
        plan_maker(list(sources), policy_path, root=root),
        options,
        root=root,
        out_dir=out_dir,
        signing_key=_signing_key(signing_key),
        signing_key_name=key_name,
        sources=[str(s) for s in sources],
        operator_policy=policy_path,
        on_ready=ready,
        continue_unsealed=continue_unsealed,
    )
    click.echo(
        f"served {service.app.served} requests; audit head: {checkpoint.chain_head} after "
        f"{checkpoint.size} records ({out_dir}/audit.jsonl, sealed)",
        err=True,
    )
    sys.exit(EXIT_INTERRUPTED if service.stopped_by == "SIGINT" else 0)


@cli.group()
def audit() -> None:
    """Verify and query audit logs."""


_verify_options = [
    click.option(
        "--pub", "public_keys", multiple=True, help="Trusted runner public key (file or base64); repeatable."
    ),
    click.option(
        "--expect-head", default=None, help="Published head to check against: a checkpoint file, or its text."
    ),
]


@audit.command("verify")
@click.argument("path", type=_ANY_PATH)
@_apply(_verify_options)
@click.option("--strict", is_flag=True, help="Also require every line to be exactly canonical JSON.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def audit_verify(
    path: Path, public_keys: tuple[str, ...], expect_head: str | None, strict: bool, fmt: str
) -> None:
    """Recompute the chain offline; name the first damaged record. Exit 0 intact, 4 otherwise."""
    from runner.api import verify_audit
    from runner.audit.verify import checks_clause

    _set_format(fmt)
    report = verify_audit(path, public_keys=public_keys, expect_head=expect_head, strict=strict)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            click.echo(render_violation(problem, "text"), err=True)
        click.echo(
            f"{report.status}: {report.records} records, {len(report.runs)} run(s), head {report.head}"
            + checks_clause(report)
        )
    sys.exit(report.exit_code)


@audit.command("merge")
@click.argument("folders", nargs=-1, required=True, type=_FOLDER)
@click.option("--plan", "plan_path", type=_FILE, required=True)
@click.option("--out", "out_dir", type=_FOLDER, required=True)
@click.option(
    "--pub", "public_keys", multiple=True, required=True, help="Trusted shard public key (file or base64)."
)
@_apply(_signing_options)
def audit_merge(
    folders: tuple[Path, ...],
    plan_path: Path,
    out_dir: Path,
    public_keys: tuple[str, ...],
    signing_key: Path | None,
    key_name: str | None,
) -> None:
    """Merge the shard folders of one plan into one verified log and the whole plan's reports."""
    from runner.api import load_plan, new_run_id
    from runner.audit.merge import merge_shards
    from runner.report import render_markdown

    outcome = merge_shards(
        list(folders),
        load_plan(plan_path),
        out_dir=out_dir,
        public_keys=[_public_key(text) for text in public_keys],
        run_id=new_run_id(),
        signing_key=_signing_key(signing_key),
        key_name=key_name,
    )
    click.echo(render_markdown(outcome.report), nl=False)
    for index, folder, run in outcome.taken:  # folder names come from uploaded artifacts
        _say(f"shard {index}/{len(outcome.taken)}: run {run} from {folder}", err=True)
    _say(
        f"merged into {out_dir}/: head {outcome.checkpoint.chain_head} "
        f"after {outcome.checkpoint.size} records",
        err=True,
    )
    sys.exit(0 if outcome.report["ok"] else 1)


@audit.command("replay")
@click.argument("path", type=_ANY_PATH)
@click.option("--job", "job", default=None, help="The job to replay (manifest/name or name); its last run.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every job of the log's last run.")
@_root_option
@click.option(
    "--modules",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="A folder holding the module, found by its sha256 (default: its path, then the module cache).",
)
@click.option("--seed", type=click.IntRange(0, (1 << 64) - 1), default=None, help="Replay with another seed.")
@click.option(
    "--pub", "public_keys", multiple=True, help="Trusted runner public key the log's seals must carry."
)
@_apply(_signing_options)
def audit_replay(
    path: Path,
    job: str | None,
    replay_all: bool,
    root: Path | None,
    modules: Path | None,
    seed: int | None,
    public_keys: tuple[str, ...],
    signing_key: Path | None,
    key_name: str | None,
) -> None:
    """Re-run a logged hermetic job from its record; print `identical` or the first difference.

    Exit 0 when every replayed job is identical, 4 when one differs or cannot be replayed."""
    from runner.api import new_run_id, resolve_root
    from runner.audit.replay import describe, exit_error, replay_log

    if (job is None) == (not replay_all):
        raise click.UsageError("give exactly one of --job NAME and --all")
    verdicts = replay_log(
        _log_path(path),
        job=job,
        root=resolve_root(root),
        modules=modules,
        seed=seed,
        public_keys=[_public_key(text) for text in public_keys],
        run_id=new_run_id(),
        signing_key=_signing_key(signing_key),  # the replay's seal is signed like a run's
        key_name=key_name,
    )
    for line in describe(verdicts):
        _say(line)
    error = exit_error(verdicts)
    if error is not None:
        raise error


def _log_path(path: Path) -> Path:
    from runner.api import log_path

    return log_path(path)


def _anchor_text(expect_head: str | None) -> str | None:
    from runner.api import anchor_text

    return anchor_text(expect_head)


def _public_key(text: str) -> Any:
    from runner.api import public_key

    return public_key(text)


def _verified(path: Path, public_keys: tuple[str, ...], expect_head: str | None) -> Any:
    """Verify the log before reading it (``AuditError``, exit 4, for a damaged or untrusted one)."""
    from runner.api import verified_log

    return verified_log(path, public_keys, expect_head)


@audit.command("show")
@click.argument("path", type=_ANY_PATH)
@click.option("--job", default=None, help="Only records of this job (manifest/job).")
@click.option("--kind", default=None, help="Only records of this kind (e.g. job.finished).")
@click.option("--run", "run_id", default=None, help="Only records of this run.")
@_apply(_verify_options)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def audit_show(
    path: Path,
    job: str | None,
    kind: str | None,
    run_id: str | None,
    public_keys: tuple[str, ...],
    expect_head: str | None,
    fmt: str,
) -> None:
    """Show audit records, filtered, to answer questions after the fact.

    The log is verified first: a damaged one is refused (exit 4). Records of a run without a seal
    are shown marked UNSEALED (JSON: "sealed": false); when they are those of the last run, which
    no later seal covers either, the exit code is 4. A filter that matches nothing is exit 2.
    """
    from runner.api import show_records
    from runner.textsafe import sanitize_text

    _set_format("json" if fmt == "json" else "text")
    shown = show_records(
        path, job=job, kind=kind, run=run_id, public_keys=public_keys, expect_head=expect_head
    )
    for record, sealed in shown.records:
        if fmt == "json":
            click.echo(json.dumps(record if sealed else {**record, "sealed": False}, sort_keys=True))
        else:
            data = sanitize_text(json.dumps(record["data"], sort_keys=True), limit=300)
            mark = "" if sealed else "UNSEALED "
            click.echo(f"{mark}{record['seq']:>6} {record['ts']} {record['kind']:<16} {data}")
    _say(shown.verification, err=True)
    if shown.shows_unsealed_tail:
        click.echo("records of the last, UNSEALED run are covered by no seal: not verified", err=True)
        sys.exit(EXIT_AUDIT_FAILED)


@audit.command("prove")
@click.argument("path", type=_ANY_PATH)
@click.option(
    "--record", "record", type=int, default=None, help="Inclusion proof of the record with this seq."
)
@click.option(
    "--consistency",
    "old_checkpoint",
    default=None,
    help="Consistency proof from this earlier checkpoint (a file).",
)
@_apply(_verify_options)
def audit_prove(
    path: Path,
    record: int | None,
    old_checkpoint: Path | None,
    public_keys: tuple[str, ...],
    expect_head: str | None,
) -> None:
    """Print an RFC 6962 inclusion or consistency proof against the log's latest signed checkpoint
    (JSON, the checkpoint included), after verifying the log."""
    from runner.audit.proofs import log_tree

    if (record is None) == (old_checkpoint is None):
        raise InputError.one("input.flags", "give exactly one of --record N and --consistency OLD_CHECKPOINT")
    _, records = _verified(path, public_keys, expect_head)
    tree = log_tree(records, Location(str(path)))
    if record is not None:
        result = tree.inclusion(record)
    else:
        where = Location(str(old_checkpoint))
        result = tree.consistency(_old_checkpoint(Path(str(old_checkpoint)), public_keys), where)
    click.echo(json.dumps(result, indent=2))


def _old_checkpoint(path: Path, public_keys: tuple[str, ...]) -> Any:
    """An earlier checkpoint, read, and with ``--pub`` one of its signatures verified."""
    from runner.audit import parse_checkpoint
    from runner.audit.checkpoint import verify_signatures

    where = Location(str(path))
    try:
        checkpoint = parse_checkpoint(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError.one("audit.checkpoint", f"not a checkpoint: {exc}", where) from None
    if public_keys and not verify_signatures(checkpoint, [_public_key(k) for k in public_keys]).verified:
        raise AuditError.one("audit.checkpoint-signature", "no signature of the checkpoint verifies", where)
    return checkpoint


@audit.command("export")
@click.argument("path", type=_ANY_PATH)
@click.option(
    "--tiles",
    "tiles_dir",
    required=True,
    type=_ANY_PATH,
    help="Write the C2SP tlog-tiles layout (checkpoint, tile/..., tile/entries/...) into this folder.",
)
@_apply(_verify_options)
def audit_export(path: Path, tiles_dir: Path, public_keys: tuple[str, ...], expect_head: str | None) -> None:
    """Export the verified log, up to its latest checkpoint, as static tlog tiles any tlog client
    can serve and check; exporting again into the same folder after more runs only adds files."""
    from runner.audit.proofs import log_tree
    from runner.audit.tiles import export_tiles

    _, records = _verified(path, public_keys, expect_head)
    tree = log_tree(records, Location(str(path)))
    if tree.checkpoint.merkle_root is None:
        raise AuditError.one(
            "audit.legacy-checkpoint",
            "the latest seal's checkpoint signs only the chain head (a log sealed before checkpoints "
            "signed the Merkle root): run once more, then export",
            Location(str(path)),
        )
    done = export_tiles(tiles_dir, tree.entries, tree.checkpoint)
    _say(
        f"exported {done.size} records as tlog tiles into {tiles_dir}/: {done.written} files written, "
        f"{done.kept} already there"
    )


@audit.command("repair")
@click.argument("out_dir", type=_FOLDER)
def audit_repair(out_dir: Path) -> None:
    """Move a torn last line (left by a crash) aside so runs can continue the log; never automatic.

    The last run is then unsealed: the next run appends only with --continue-unsealed, and its
    run.continued record names the side file.
    """
    from runner.audit import repair_torn_tail

    side = repair_torn_tail(out_dir)
    if side is None:
        _say("the log is not torn; nothing to do")
    else:
        _say(f"moved the torn tail to {side}; the last run is unsealed: run with --continue-unsealed")


@cli.command()
@click.argument("path", type=_ANY_PATH)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "junit", "md", "html", "github"]),
    default="md",
    show_default=True,
    help="github: one ::error annotation per failed or denied job.",
)
@_root_option
@click.option("--run", "run_id", default=None, help="Which run (default: the last one in the log).")
@_apply(_verify_options)
@click.option(
    "-o",
    "--output",
    type=_FILE,
    default=None,
    help="Write here instead of stdout.",
)
def report(
    path: Path,
    fmt: str,
    run_id: str | None,
    public_keys: tuple[str, ...],
    expect_head: str | None,
    output: Path | None,
    root: Path | None,
) -> None:
    """Rebuild a run's report from the audit log alone, after verifying it (exit 4 if it does not).

    The run must be sealed: a run that died before its seal has no results to vouch for.
    """
    from runner.api import report_from_log
    from runner.fileio import write_atomic

    rendered = report_from_log(
        path,
        fmt=fmt,
        run=run_id,
        public_keys=public_keys,
        expect_head=expect_head,
        output=output,
        root=root,
    )
    text = rendered.text
    _say(rendered.verification, err=True)
    if output is None:
        click.echo(text, nl=False)
    else:
        write_atomic(output, text.encode("utf-8"))


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def catalog(fmt: str) -> None:
    """List the built-in tools and the governance effects of grants and gate actions."""
    from runner.catalog import CATALOG
    from runner.policy.governance import ACTION_EFFECTS, GRANT_EFFECTS

    if fmt == "json":
        tools = [
            {
                "name": b.name,
                "module": b.module,
                "sha256": b.sha256,
                "actions": list(b.actions),
                "effects": dict(b.effects),
                "doc": b.doc,
            }
            for b in CATALOG.values()
        ]
        model = {"grants": GRANT_EFFECTS, "actions": ACTION_EFFECTS}
        click.echo(json.dumps({"builtins": tools, "effects": model}, indent=2))
        return

    def shown(effects: dict[str, float]) -> str:
        return ", ".join(f"{axis} +{weight}" for axis, weight in effects.items()) or "-"

    click.echo("built-in tools (module: builtin:NAME; the package pins each digest):")
    for b in CATALOG.values():
        click.echo(f"  {b.name:<11} {b.sha256}  {b.doc}")
        click.echo(f"  {'':<11} actions: {', '.join(b.actions) or '-'}; effects: {shown(dict(b.effects))}")
    click.echo("governance effects (added per grant, clipped to 1 per axis; score = L2 norm):")
    for name, effects in [*GRANT_EFFECTS.items(), *(("action " + k, v) for k, v in ACTION_EFFECTS.items())]:
        click.echo(f"  {name:<22} {shown(effects)}")


@cli.group()
def keys() -> None:
    """Manage Ed25519 signing keys."""


@keys.command("generate")
@click.option("--id", "key_id", required=True, help="Key id, as policies name it (e.g. release-2026).")
@click.option("--out", "out_dir", type=_FOLDER, required=True)
def keys_generate(key_id: str, out_dir: Path) -> None:
    """Write OUT/ID.key (private, 0600, never printed) and OUT/ID.pub."""
    from runner.api import generate_keys

    pair = generate_keys(key_id, out_dir)
    _say(f"private key: {pair.private_path} (keep it secret)")
    _say(f"public key:  {pair.public_path}")
    click.echo("add to a policy's signatures.trusted_keys:")
    _say(f"  - {{id: {pair.key_id}, public_key: {pair.public_b64}}}")


@cli.command()
@click.argument("module", type=_FILE)
@click.option(
    "--key",
    "key_path",
    type=_FILE,
    required=True,
    help="The private key file (from `sandrun keys generate`).",
)
@click.option("--key-id", default=None, help="Key id to print (default: the key file's name without .key).")
def sign(module: Path, key_path: Path, key_id: str | None) -> None:
    """Sign MODULE; print the sha256 and signature block to paste into a manifest."""
    from runner.api import sign_module

    signed = sign_module(module, key_path, key_id)
    click.echo(f"sha256: {signed.sha256}")
    _say(f"signature: {{key: {signed.key_id}, sig: {signed.signature}}}")


@cli.command()
@click.argument("module", type=_FILE)
@click.option("--sig", "signature", required=True, help="The base64 signature.")
@click.option("--pub", "public", required=True, help="The public key: a file, or its base64 text.")
def verify(module: Path, signature: str, public: str) -> None:
    """Verify a module signature; exit 0 when it verifies, 3 when it does not."""
    from runner.api import verify_module

    digest = verify_module(module, signature, public)
    click.echo(f"ok: signature verifies for sha256 {digest}")


@cli.command(name="test")
@click.argument("paths", nargs=-1, type=_ANY_PATH)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "github", "junit"]), default="text", show_default=True
)
def test_command(paths: tuple[Path, ...], fmt: str) -> None:
    """Run policy tests (*.test.yaml below PATHS, default: .). Exit 0 all pass, 1 one failed, 2 invalid."""
    from runner.policytest import failure_violation, render_junit, run_paths

    _set_format("github" if fmt == "github" else "text")
    results = run_paths(list(paths) or [Path(".")])
    failed = [r for r in results if r.outcome == "failed"]
    if fmt == "junit":
        click.echo(render_junit(results), nl=False)
    else:
        for result in failed:
            click.echo(render_violation(failure_violation(result), fmt), err=fmt != "github")
        _say(f"{len(results) - len(failed)} passed, {len(failed)} failed ({len(results)} policy test(s))")
    sys.exit(1 if failed else 0)


class _DefaultCommandGroup(click.Group):
    """A group whose first argument, when not one of its commands, goes to ``create``
    (``sandrun attest OUT`` and ``sandrun attest verify BUNDLE``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_DefaultCommandGroup)
def attest() -> None:
    """Signed in-toto attestations (DSSE) built from a verified audit log: docs/attest.md."""


@attest.command("create")
@click.argument("out_dir", type=_ANY_PATH)
@_apply(_verify_options)
@_apply(_signing_options)
@click.option("--run", "run_id", default=None, help="The sealed run to attest (default: the last one).")
@click.option(
    "-o",
    "--output",
    type=_FILE,
    default=None,
    help="The bundle to write (default: OUT/attestations.intoto.jsonl).",
)
def attest_create(
    out_dir: Path,
    public_keys: tuple[str, ...],
    expect_head: str | None,
    signing_key: Path | None,
    key_name: str | None,
    run_id: str | None,
    output: Path | None,
) -> None:
    """Verify OUT's audit log, then write its run's attestations signed by the runner key.

    The log's seals must verify under --pub, or (by default) under the runner key itself.
    """
    from runner.attest import BUNDLE_NAME, attest, statements_from_log
    from runner.fileio import write_atomic

    key = _signing_key(signing_key)
    if key is None:
        raise InputError.one("attest.no-key", "give the runner key (--signing-key or SANDRUN_SIGNING_KEY)")
    # Without --pub, the log's seals must be signed by the very key that signs the attestations:
    # otherwise anyone able to rewrite the log (the chain itself is unkeyed) gets it attested.
    keys = [_public_key(text) for text in public_keys] or [key.public_key()]
    statements = statements_from_log(
        _log_path(out_dir), public_keys=keys, expect_head=_anchor_text(expect_head), run=run_id
    )
    target = output or (out_dir if out_dir.is_dir() else out_dir.parent) / BUNDLE_NAME
    write_atomic(target, attest(statements, key))
    _say(f"wrote {target}: {len(statements)} signed statement(s)")


@attest.command("verify")
@click.argument("bundle", type=_FILE)
@click.option(
    "--pub", "public_keys", multiple=True, help="Trusted runner public key (file or base64); repeatable."
)
@click.option(
    "--log",
    "log",
    type=_ANY_PATH,
    default=None,
    help="Also require the statements to be exactly those this audit log (or folder) gives.",
)
def attest_verify(bundle: Path, public_keys: tuple[str, ...], log: Path | None) -> None:
    """Verify every envelope's signature and statement. Exit 0 verified, 4 not, 2 bad input."""
    from runner.attest import statements_from_log, verify_bundle

    keys = [_public_key(text) for text in public_keys]
    expected = None
    if log is not None:
        expected = statements_from_log(_log_path(log), public_keys=keys)
    verified = verify_bundle(bundle, keys, expected=expected)
    for item in verified:
        _say(f"ok: line {item.line}: {item.predicate_type} ({item.subjects} subject(s))")
    _say(f"verified: {len(verified)} statement(s)" + (" matching the audit log" if log is not None else ""))


@cli.group()
def policy() -> None:
    """Reason about policies: containment proofs and reviewable diffs (docs/prove.md)."""


def _proof_policies(first: Path, second: Path, root: Path | None) -> tuple[Any, Any, Path]:
    from runner.api import load_policy

    base = (root or Path.cwd()).resolve()
    problems: list[Violation] = []
    loaded = []
    for path in (first, second):
        try:
            loaded.append(load_policy(path, base))
        except InputError as exc:
            problems.extend(exc.violations)
    if problems:
        raise InputError(violations=tuple(problems))
    return loaded[0], loaded[1], base


def _finding_lines(finding: Any) -> list[str]:
    lines = [f"[{finding.area}] {finding.verdict}: {finding.reason}"]
    if finding.manifest is not None:
        when = f" (on {finding.on.isoformat()})" if finding.on is not None else ""
        lines.append(f"-> counterexample{when}: {json.dumps(finding.manifest)}")
    if finding.runtime is not None:
        lines.append(f"-> counterexample at run time: {finding.runtime}")
    lines.extend(f"-> needs: {need}" for need in finding.needs)
    return lines


@policy.command("prove")
@click.argument("candidate", type=_FILE)
@click.option(
    "--boundary",
    "ceiling",
    type=_FILE,
    required=True,
    help="The ceiling policy the candidate must stay within.",
)
@_root_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def policy_prove(candidate: Path, ceiling: Path, root: Path | None, fmt: str) -> None:
    """Prove everything CANDIDATE allows, the boundary allows too.

    Exit 0 contained, 1 not contained (a counterexample is printed), 2 invalid input,
    3 unsupported (a part the prover cannot decide: CI should fail on it).
    """
    from runner.prove import outcome, prove

    _set_format("json" if fmt == "json" else "text")
    first, second, base = _proof_policies(candidate, ceiling, root)
    findings = prove(first, second, base)
    verdict = outcome(findings)
    if fmt == "json":
        click.echo(
            json.dumps({"result": verdict, "findings": [_finding_dict(f) for f in findings]}, indent=2)
        )
    else:
        for finding in findings:
            for line in _finding_lines(finding):
                _say(line)
        _say(
            f"{verdict}: {candidate} within {ceiling}"
            if verdict == "contained"
            else f"{verdict}: {candidate} vs {ceiling}"
        )
    sys.exit({"contained": 0, "not-contained": 1, "unsupported": 3}[verdict])


def _finding_dict(finding: Any) -> dict[str, Any]:
    return {
        "area": finding.area,
        "verdict": finding.verdict,
        "reason": finding.reason,
        "manifest": finding.manifest,
        "runtime": finding.runtime,
        "on": None if finding.on is None else finding.on.isoformat(),
        "needs": list(finding.needs),
    }


@policy.command("diff")
@click.argument("old", type=_FILE)
@click.argument("new", type=_FILE)
@_root_option
@click.option("--format", "fmt", type=click.Choice(["md", "github"]), default="md", show_default=True)
def policy_diff(old: Path, new: Path, root: Path | None, fmt: str) -> None:
    """List every capability NEW widens or narrows compared with OLD (Markdown, or GitHub annotations)."""
    from runner.prove import prove
    from runner.report import _md as markdown_cell  # the one Markdown table-cell escaper
    from runner.report import github_annotation

    before, after, base = _proof_policies(old, new, root)
    changes = [("widened", f) for f in prove(after, before, base)] + [
        ("narrowed", f) for f in prove(before, after, base)
    ]
    if fmt == "github":
        for change, finding in changes:
            detail = " ".join(_finding_lines(finding)[1:2])
            annotation = github_annotation(
                f"{finding.verdict}: {finding.reason} {detail}",
                title=f"policy {change}: {finding.area}",
                file=str(new),
                level="warning" if change == "widened" else "notice",
            )
            click.echo(annotation)
        widened = sum(change == "widened" for change, _ in changes)
        _say(f"{widened} widened, {len(changes) - widened} narrowed")
        return
    click.echo(f"## Policy diff: {markdown_cell(str(old))} → {markdown_cell(str(new))}\n")
    if not changes:
        click.echo("No capability widened or narrowed.")
        return
    click.echo("| change | capability | what | example |\n| --- | --- | --- | --- |")
    for change, finding in changes:
        example = json.dumps(finding.manifest) if finding.manifest is not None else (finding.runtime or "")
        verdict = "" if finding.verdict == "not-contained" else " (undecided)"
        click.echo(
            f"| **{change}**{verdict} | {markdown_cell(finding.area)} | {markdown_cell(finding.reason)} "
            f"| {markdown_cell(example, limit=2000)} |"
        )


@functools.cache
def _skip_final_collection() -> None:
    """Freeze the heap at exit, after the exit handlers registered later (they run first): the
    interpreter's final garbage collection then skips it, ~15 ms of a small ``check`` and ~45 ms
    of an ``exec`` here (bench/bench_startup.py). Nothing relies on that collection: the log, the
    reports and the standard streams are closed or flushed explicitly, never by a finaliser."""
    atexit.register(gc.freeze)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``sandrun`` and ``python -m runner``)."""
    _skip_final_collection()
    try:
        cli.main(args=argv, prog_name="sandrun")
    finally:  # flush here, where a closed pipe is quiet, not at exit (Python prints it, exit 120)
        with _reader_may_leave():
            sys.stdout.flush()
