"""The ``sandrun`` command line: flags to api calls, and the one place errors become exit codes.

Only this module imports ``click``. Heavy modules (wasmtime, jsonschema, cryptography) are imported
inside the commands that need them, so ``sandrun --help`` starts fast. Every
:class:`~runner.errors.SandrunError` is caught once, in :func:`main`, printed one line per problem,
and mapped to its documented exit code; no input ever produces a traceback (set
``SANDRUN_DEBUG=1`` to see one for a bug).
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import click

from runner import __version__
from runner.errors import EXIT_INTERRUPTED, InputError, Location, SandrunError, Violation

__all__ = ["main", "cli"]

EXIT_INTERNAL = 70

_policy_option = click.option(
    "--policy", "policy_path", type=click.Path(path_type=Path), required=True, help="The policy file."
)
_root_option = click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
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


class _Context:
    """What the error printer needs to know about the running command."""

    fmt: str = "text"


def _github_escape(text: str, *, property_value: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def render_violation(violation: Violation, fmt: str) -> str:
    if fmt != "github":
        return violation.render()
    props = []
    location = violation.location
    if location is not None:
        props.append(f"file={_github_escape(location.file, property_value=True)}")
        if location.line is not None:
            props.append(f"line={location.line}")
        if location.column is not None:
            props.append(f"col={location.column}")
    props.append(f"title={_github_escape(violation.rule_id, property_value=True)}")
    pointer = f"{location.pointer}: " if location is not None and location.pointer else ""
    return f"::error {','.join(props)}::{_github_escape(pointer + violation.message)}"


def _report_error(error: SandrunError, fmt: str) -> None:
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
            _report_error(error, _Context.fmt)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug: one line, never a traceback, unless asked for
            if os.environ.get("SANDRUN_DEBUG"):
                traceback.print_exc()
            click.echo(
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
      4  audit verification failed
      130 interrupted (Ctrl-C)
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_policy_option
@_root_option
@_format_option
def check(paths: tuple[Path, ...], policy_path: Path, root: Path | None, fmt: str) -> None:
    """Check manifests (files or folders) against a policy; report every problem."""
    from runner.api import compile_manifests

    _Context.fmt = fmt
    plan = compile_manifests(list(paths), policy_path, root=root)
    if fmt == "json":
        click.echo(
            json.dumps(
                {"ok": True, "plan_sha256": plan.sha256, "jobs": len(plan.jobs), "tools": len(plan.tools)},
                indent=2,
            )
        )
    else:
        manifests = len({job.manifest for job in plan.jobs})
        click.echo(
            f"ok: {manifests} manifest(s), {len(plan.tools)} tool(s), {len(plan.jobs)} job(s) "
            f"allowed by policy {plan.policy.name!r}; plan sha256 {plan.sha256}"
        )


@cli.command(name="compile")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_policy_option
@_root_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("plan.json"),
    show_default=True,
    help="Where to write the plan (- for stdout).",
)
@_format_option
def compile_command(
    paths: tuple[Path, ...], policy_path: Path, root: Path | None, output: Path, fmt: str
) -> None:
    """Compile manifests and a policy into a plan (canonical JSON)."""
    from runner.api import compile_manifests
    from runner.fileio import write_atomic

    _Context.fmt = fmt
    plan = compile_manifests(list(paths), policy_path, root=root)
    data = plan.to_json() + b"\n"
    if str(output) == "-":
        click.echo(data.decode("utf-8"), nl=False)
    else:
        write_atomic(output, data)
        click.echo(f"wrote {output}: {len(plan.jobs)} job(s), plan sha256 {plan.sha256}", err=True)


@cli.command()
@click.argument("kind", type=click.Choice(["manifest", "policy"]))
def schema(kind: str) -> None:
    """Print the JSON Schema of a manifest or a policy (for editors and CI linters)."""
    from runner.schema import schema_text

    click.echo(schema_text(kind), nl=False)  # type: ignore[arg-type]


@cli.command()
def catalog() -> None:
    """List the built-in tools and the governance effects of grants and gate actions."""
    from runner.policy.governance import ACTION_EFFECTS, GRANT_EFFECTS

    click.echo("built-in tools (module: builtin:NAME): none in this version")
    click.echo("governance effects (added per grant, clipped to 1 per axis; score = L2 norm):")
    for name, effects in [*GRANT_EFFECTS.items(), *(("action " + k, v) for k, v in ACTION_EFFECTS.items())]:
        click.echo(f"  {name:<22} " + ", ".join(f"{axis} +{weight}" for axis, weight in effects.items()))


@cli.group()
def keys() -> None:
    """Manage Ed25519 signing keys."""


@keys.command("generate")
@click.option("--id", "key_id", required=True, help="Key id, as policies name it (e.g. release-2026).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
def keys_generate(key_id: str, out_dir: Path) -> None:
    """Write OUT/ID.key (private, 0600, never printed) and OUT/ID.pub."""
    from runner.signing import KeyFileError, write_keypair

    try:
        pair = write_keypair(key_id, out_dir)
    except KeyFileError as exc:
        raise InputError.one("keys.generate", str(exc)) from None
    click.echo(f"private key: {pair.private_path} (keep it secret)")
    click.echo(f"public key:  {pair.public_path}")
    click.echo("add to a policy's signatures.trusted_keys:")
    click.echo(f"  - {{id: {pair.key_id}, public_key: {pair.public_b64}}}")


def _file(path: Path) -> Location:
    return Location(file=str(path))


def _read_module(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError.one("input.read", f"cannot read module: {exc.strerror}", _file(path)) from None


@cli.command()
@click.argument("module", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The private key file (from `sandrun keys generate`).",
)
@click.option("--key-id", default=None, help="Key id to print (default: the key file's name without .key).")
def sign(module: Path, key_path: Path, key_id: str | None) -> None:
    """Sign MODULE; print the sha256 and signature block to paste into a manifest."""
    import hashlib

    from runner.signing import KeyFileError, load_private_key, sign_module_digest

    digest = hashlib.sha256(_read_module(module)).hexdigest()
    try:
        key = load_private_key(key_path)
    except KeyFileError as exc:
        raise InputError.one("keys.invalid", str(exc), _file(key_path)) from None
    signature = sign_module_digest(key, digest)
    click.echo(f"sha256: {digest}")
    click.echo(f"signature: {{key: {key_id or key_path.stem}, sig: {signature}}}")


@cli.command()
@click.argument("module", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--sig", "signature", required=True, help="The base64 signature.")
@click.option("--pub", "public", required=True, help="The public key: a file, or its base64 text.")
def verify(module: Path, signature: str, public: str) -> None:
    """Verify a module signature; exit 0 when it verifies, 3 when it does not."""
    import hashlib

    from runner.errors import PolicyDenied
    from runner.signing import KeyFileError, parse_public_key, verify_module_digest

    digest = hashlib.sha256(_read_module(module)).hexdigest()
    public_path = Path(public)
    try:
        text = public_path.read_text(encoding="ascii") if public_path.is_file() else public
        key = parse_public_key(text)
    except (KeyFileError, UnicodeDecodeError) as exc:
        raise InputError.one("keys.invalid", f"public key: {exc}") from None
    if not verify_module_digest(key, digest, signature):
        raise PolicyDenied.one(
            "signature.invalid", f"the signature does not verify for sha256 {digest}", _file(module)
        )
    click.echo(f"ok: signature verifies for sha256 {digest}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``sandrun`` and ``python -m runner``)."""
    cli.main(args=argv, prog_name="sandrun")
