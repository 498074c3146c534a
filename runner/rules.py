"""Every rule id Sandrun reports, with its category, its exit code and one line of documentation.

The model is pyca/cryptography's ``_Reasons``: one table is the truth about what a rule means, so no
code guesses a category from an id's prefix or from the exception class that carried it. A rule is
in one of four categories:

* **invalid input** (exit 2): a file or flag that cannot be read, parsed or makes no sense, whatever
  the policy says;
* **policy denial** (exit 3): valid input that the policy, or a trust check (digest, signature,
  root), refuses;
* **audit failure** (exit 4): an audit log that cannot be written or does not verify;
* **job failure** (exit 1): found only when a job is about to run; it stops that job, and the run
  ends with exit 1.

To add a rule, add one line to the table of its category below; ``docs/policy.md``'s rule table is
generated from it (``python -m runner.rules docs/policy.md``), and the tests check that every rule id used in
``runner/`` is registered and that the docs match.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["Category", "Rule", "RULES", "lookup", "exit_code_for", "markdown_table"]


class Category(enum.Enum):
    """What kind of problem a rule names; the value is ``(label, exit code, precedence)``."""

    INVALID_INPUT = ("invalid input", 2, 0)
    AUDIT_FAILURE = ("audit failure", 4, 1)
    POLICY_DENIAL = ("policy denial", 3, 2)
    JOB_FAILURE = ("job failure", 1, 3)

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def exit_code(self) -> int:
        return self.value[1]

    @property
    def precedence(self) -> int:
        """Lower wins when one error mixes categories: bad input first (fix it before anything else)."""
        return self.value[2]


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule id: stable, documented, and in exactly one category."""

    id: str
    category: Category
    doc: str

    @property
    def exit_code(self) -> int:
        return self.category.exit_code


# One line per rule: id -> what it means. Keep each table sorted by id.
_INVALID_INPUT = {
    "attest.no-key": "`attest` or `attest verify` has no key to sign or verify with",
    "audit.checkpoint": "an old checkpoint (`audit prove --consistency`) cannot be read or parsed",
    "audit.no-record": "`audit prove --record N` names no record of the log",
    "audit.tiles-entry": "a record is too long for a tlog-tiles entry (65535 bytes)",
    "component.invoke": "a component job's `invoke` names an export; components take a WAVE call `f(1, 2)`",
    "fs.guest-duplicate": "two mounts of a job share a guest path",
    "fs.guest-invalid": "a guest path is not absolute or has `..`",
    "fs.guest-nested": "one guest path of a job is inside another",
    "fs.missing": "a mount's host folder does not exist or cannot be resolved (a symlink loop)",
    "fs.not-directory": "a mount's host path is not a folder",
    "fs.work-dir-missing": "a job's `work_dir` is not a folder in its mount, or leads through a symlink",
    "fs.work-dir-outside-mounts": "a job's `work_dir` is not a plain absolute path inside one of its mounts",
    "fs.work-dir-root-mount": "a job has a `work_dir` other than `/` and a mount at guest `/`",
    "hermetic.epoch": "`SOURCE_DATE_EPOCH` is set but is not a whole number of seconds",
    "input.empty": "the paths on the command line hold no manifests",
    "input.encoding": "a command-line argument, variable or path is not valid UTF-8",
    "input.expect-head": "the `--expect-head` checkpoint cannot be read or parsed",
    "input.flag": "a command-line flag's value cannot be parsed (`serve --max-body`)",
    "input.flags": "flags that cannot go together, or a required one missing",
    "input.format": "a report format that cannot be made from this input",
    "input.missing": "a path on the command line does not exist",
    "input.no-match": "`audit show` filters match no record",
    "input.policy": "`run` was given manifests but no `--policy`",
    "input.read": "a file named on the command line cannot be read",
    "input.run": "`report --run` names a run the log does not hold",
    "input.signing-key": "the runner's signing key cannot be read or parsed",
    "input.tiles-dir": "the `export --tiles` folder is a file, neither empty nor an export, or has a symlink",
    "invoke.arity": "an `invoke` call gives more or fewer arguments than the export takes",
    "invoke.export": "the module or component exports no function named by `invoke`",
    "invoke.malformed": "a job's `invoke` call expression is not valid WAVE text",
    "invoke.out-of-range": "an `invoke` argument does not fit its parameter's type (Wasmtime truncates)",
    "invoke.type": "an `invoke` argument is not of the parameter's type, or the type cannot be passed",
    "job.duplicate-name": "two jobs of a manifest share a name",
    "job.unknown-tool": "a job names a tool its manifest does not declare",
    "key.duplicate-material": "the same key material is trusted under two ids",
    "key.non-canonical": "an Ed25519 public key is not canonically encoded",
    "key.pem-shape": "a PEM key is not exactly one block, or has text around it",
    "key.small-order": "an Ed25519 public key is a weak (small-order) point",
    "key.unsupported": "a key is not an Ed25519 key (another type or curve)",
    "keys.generate": "a key pair cannot be written",
    "keys.invalid": "a key given on the command line cannot be read or parsed",
    "limits.invalid": "a limit cannot be parsed",
    "manifest.duplicate-name": "two manifests share `metadata.name`",
    "merge.out-exists": "`audit merge --out` already holds a log",
    "module.builtin-unknown": "(at run time) a plan names a built-in module that does not exist",
    "module.invalid": "(at run time) the module file is not a valid WebAssembly module",
    "module.missing": "(at run time) the module file is gone",
    "modules.invalid": "(in the policy) a `modules` size or duration cannot be parsed",
    "needs.cycle": "the `needs` of a manifest's jobs form a cycle",
    "needs.unknown": "`needs` names no job of the manifest",
    "network.pattern": "a host pattern or block entry is malformed",
    "out.unsafe": "`--out` (or `exec`'s state folder) is a symlink, another user's, writable by others, "
    "or holds an `audit.*` entry that is not a regular file",
    "path.backslash": "a path under the root has a backslash in a name, which a plan cannot carry",
    "plan.invalid": "a plan file is not a canonical sandrun plan",
    "policy.key-case": "(in the policy) a trusted or revoked key id differs from a trusted one only in case",
    "policy.key-duplicate": "(in the policy) a trusted key id is listed twice",
    "policy.key-invalid": "(in the policy) a trusted key or its `not_after` cannot be parsed",
    "policy.root-invalid": "(in the policy) an `fs` root folder cannot be resolved (a symlink loop)",
    "policy.wasm-feature-unsupported": "(in the policy) `wasm_features` keeps a proposal the engine lacks",
    "policytest.none": "no policy tests (`*.test.yaml`) were found",
    "replay.job-unknown": "`audit replay` names a job the log has no hermetic record of",
    "replay.module-missing": "`audit replay` finds the module neither in the cache nor in `--modules`",
    "root.missing": "the root folder cannot be opened",
    "route.duplicate": "two served jobs declare the same `route` (in any manifests of the plan)",
    "route.mount-rw": "a served job (with a `route`) has a `rw` mount: served mounts are read-only",
    "route.reserved": "a `route` is `/healthz` or under it (`serve`'s own health check)",
    "route.stdin": "a served job has a `stdin` file: its stdin is the request body",
    "schema.any-of": "a value matches none of the forms its field allows",
    "schema.const": "a value is not the one its field requires",
    "schema.enum": "a value is not one of its field's choices",
    "schema.format": "a size, duration, host pattern or date cannot be parsed",
    "schema.invalid": "a value breaks a schema keyword that has no rule of its own",
    "schema.max-items": "a list is longer than its field allows (a documented cap)",
    "schema.max-problems": "more schema problems than are reported (50); the rest are left out",
    "schema.maximum": "a number is above its field's maximum",
    "schema.min-items": "a list is shorter than its field allows",
    "schema.min-length": "a string is shorter than its field allows",
    "schema.minimum": "a number is below its field's minimum",
    "schema.not": "a value has a form its field forbids",
    "schema.pattern": "a string does not have its field's shape",
    "schema.required": "a required field is missing",
    "schema.type": "a value has the wrong type",
    "schema.unique-items": "a list holds the same item twice",
    "schema.unknown-field": "a mapping has a field the schema does not know",
    "serve.bind": "`serve` cannot listen on the address and port (in use, not local, not allowed)",
    "serve.no-routes": "`serve` was given a plan in which no job has a `route`",
    "serve.not-installed": "`serve` needs the serve extra (uvicorn, starlette), which is not installed",
    "shard.durations": "the `--durations` report cannot be read or used",
    "shard.invalid": "`--shard` is malformed or out of range",
    "shard.unknown": "`--shard auto` cannot tell which shard this is",
    "stdin.missing": "the stdin file does not exist, cannot be read or is not a regular file",
    "tool.builtin-unknown": "`builtin:NAME` names no tool in the built-in catalog",
    "tool.module.missing": "the module file does not exist or cannot be resolved (a symlink loop)",
    "tool.module.not-file": "the module path is not a file",
    "tool.module.not-wasm": "the module file is not a WebAssembly binary (its first bytes are named)",
    "tool.module.unreadable": "the module file cannot be read",
    "yaml.alias": "the file uses an anchor or alias",
    "yaml.depth": "the document is nested too deep",
    "yaml.directive": "a `%YAML` directive other than 1.2",
    "yaml.duplicate-key": "a mapping repeats a key",
    "yaml.empty": "the file or document is empty",
    "yaml.encoding": "the file is not UTF-8 text",
    "yaml.invisible-char": "the file holds NEL, a line or paragraph separator, or a bidirectional control",
    "yaml.key-type": "a mapping key is not a string",
    "yaml.merge-key": "the file uses a `<<` merge key",
    "yaml.multiple-documents": "the file holds more than one YAML document",
    "yaml.not-mapping": "the top level is not a mapping",
    "yaml.number": "an integer has too many digits",
    "yaml.read": "the file cannot be read",
    "yaml.special-float": "infinity, not-a-number, or a float too large",
    "yaml.syntax": "the file is not YAML",
    "yaml.tag": "the file uses an explicit tag or `%TAG`",
    "yaml.too-large": "the file is larger than Sandrun reads",
}

_POLICY_DENIAL = {
    "actions.denied": "a gate action matches the policy's `actions.deny`",
    "actions.not-allowed": "a gate action matches no `actions.allow` pattern",
    "fs.outside-root": "a mount's host folder resolves (symlinks followed) outside the root",
    "fs.outside-roots": "a mount resolves outside every `fs.roots` entry of the policy",
    "fs.write-denied": "a `rw` mount is not inside the policy's `fs.write`",
    "governance.score": "a job's governance score is above `governance.max_score`",
    "hermetic.network": "a hermetic job asks for network (its answers could not be replayed)",
    "hermetic.required": "the policy's `hermetic.required` is set and a job is not hermetic",
    "limits.engine-max": "a job's `stack` is above what the engine takes (2 MiB)",
    "limits.max": "a limit is above the policy's `limits.max`",
    "module.digest-changed": "(at run time) the module's bytes changed since the plan was made",
    "modules.max-engines": "the job would add an engine configuration beyond `modules.max_engines`",
    "modules.max-size": "the module file is larger than the policy's `modules.max_size`",
    "mount.changed": "(at run time) a mount's or `work_dir`'s path now leads through a symlink",
    "mount.missing": "(at run time) a mount's or `work_dir`'s folder is gone or is not a folder",
    "mount.protected": "(at run time) a `rw` mount overlaps the output folder, the cache or the policy "
    "file, or a mount holds the cache key or the signing key",
    "network.uncovered": "a job's network allow entry is not covered by the policy's `network.allow`",
    "network.secret": "a job names a secret the policy's `network.secrets` does not list",
    "network.limits": "a `network.limits` value cannot be parsed, or a job's is above the policy's",
    "plan.manifest-outside-root": "a plan names a manifest outside the root",
    "plan.mismatch": "a plan does not match what its manifests and policy compile to now",
    "plan.policy-mismatch": "a plan was not compiled under the policy the operator names (`--policy`)",
    "plan.policy-outside-root": "a plan names a policy outside the root",
    "signature.embedded": "the module's `signature` section verifies under no trusted, valid key",
    "signature.expired-key": "today (UTC) is after the signing key's `not_after`",
    "signature.invalid": "a signature does not verify for this module's digest",
    "signature.missing": "signatures are required and the tool has none",
    "signature.revoked-key": "the signing key id is in `signatures.revoked`",
    "signature.unknown-key": "signatures are required and the signing key is not trusted",
    "stdin.changed": "(at run time) the stdin file now leads through a symlink",
    "stdin.outside-root": "the stdin file resolves outside the root",
    "stdin.outside-roots": "the stdin file is outside every `fs.roots` entry of the policy",
    "tool.builtin-corrupt": "the package's bytes of a built-in do not have the digest the package pins",
    "tool.builtin-shadow": "a module file lies at a path the plan cannot tell from `builtin:NAME`",
    "tool.digest": "the module's bytes do not have the manifest's `sha256`",
    "tool.module.outside-root": "the module file resolves (symlinks followed) outside the root",
    "tool.module.wasm-feature": "the module needs a WebAssembly proposal the policy denies",
    "tool.revoked": "the module's digest is in `signatures.revoked`",
}

_AUDIT_FAILURE = {
    "attest.empty": "an attestation bundle holds no envelope",
    "attest.envelope": "a line of the bundle is not a DSSE envelope",
    "attest.mismatch": "the attested statements differ from what the audit log records",
    "attest.signature": "no signature of an envelope verifies under the given keys",
    "attest.statement": "an envelope does not hold a valid in-toto statement",
    "attest.unsealed": "the run to attest is not a sealed run of the log",
    "audit.bad-record": "a record the report needs has the wrong shape",
    "audit.bad-seal-signature": "a seal's signature does not verify",
    "audit.checkpoint-signature": "no signature of the old checkpoint verifies",
    "audit.closed": "a record was appended to a run already sealed",
    "audit.cut-back": "a log that `audit repair` cut back is appended to without `--continue-unsealed`",
    "audit.edited": "a record was changed after it was written",
    "audit.head-mismatch": "the log does not lead to the published head",
    "audit.inserted": "a record was added to the log",
    "audit.legacy-checkpoint": "the latest checkpoint signs no Merkle root (a log sealed before it did)",
    "audit.locked": "another process holds the log's lock",
    "audit.merged-shard": "a shard log embedded in a merged log does not verify",
    "audit.no-plan": "the run has no compiled plan in the log",
    "audit.not-a-prefix": "the old checkpoint is not a start of this log",
    "audit.removed": "records were removed from the log",
    "audit.reordered": "records are out of order",
    "audit.run-reused": "a run id is used twice",
    "audit.seal-mismatch": "a seal does not match the records it seals",
    "audit.tiles-mismatch": "the export folder holds tiles of another log or history",
    "audit.torn-line": "the last line is incomplete (a crash while writing)",
    "audit.truncated": "the log ends before the published head",
    "audit.unknown-signer": "a seal is signed by a key that is not trusted",
    "audit.unsealed": "a run has no seal",
    "audit.unsigned": "a seal is not signed but a signer was expected",
    "audit.write-failed": "the log cannot be written",
    "merge.duplicated": "a shard folder or run is given twice",
    "merge.foreign": "a shard log belongs to another plan or partition",
    "merge.incomplete": "a shard did not finish exactly its assigned jobs",
    "merge.missing": "a shard index has no log",
    "merge.tampered": "a shard log does not verify",
    "merge.unsealed": "a shard log ends unsealed",
    "merge.untrusted": "a shard log is sealed by none of the given keys",
    "replay.differs": "a replayed hermetic job does not match its record (the first difference is named)",
    "replay.not-hermetic": "`audit replay` names a job that did not run hermetic, or never ran",
    "replay.rw-unrebuildable": "a rw mount's content before the run cannot be rebuilt for a replay",
}

_JOB_FAILURE: dict[str, str] = {
    "compile.cancelled": "(at deploy) the run was interrupted while the module compiled",
    "compile.crashed": "(at deploy) the compile process died (the signal is named)",
    "compile.memory": "(at deploy) compiling the module needed more than `modules.compile_memory`",
    "compile.timeout": "(at deploy) compiling the module took longer than `modules.compile_timeout`",
    "hermetic.tree-too-large": "a hermetic job's mount holds too many files or bytes to digest",
    "invoke.result-size": "an `invoke` export returned more than 64 KiB of WAVE text (results are not kept)",
    "net.component-import": "a component imports `sandrun:http/client` with a type unlike the WIT file's",
    "policytest.failed": "a policy test case did not get the outcome it expects (`sandrun test`)",
}


def _registry(*tables: tuple[Category, Mapping[str, str]]) -> Mapping[str, Rule]:
    rules: dict[str, Rule] = {}
    for category, table in tables:
        for rule_id, doc in table.items():
            if rule_id in rules:
                raise ValueError(f"rule {rule_id!r} is registered twice")
            rules[rule_id] = Rule(rule_id, category, doc)
    return MappingProxyType(dict(sorted(rules.items())))


#: Every rule, by id, in id order.
RULES: Mapping[str, Rule] = _registry(
    (Category.INVALID_INPUT, _INVALID_INPUT),
    (Category.POLICY_DENIAL, _POLICY_DENIAL),
    (Category.AUDIT_FAILURE, _AUDIT_FAILURE),
    (Category.JOB_FAILURE, _JOB_FAILURE),
)


def lookup(rule_id: str) -> Rule:
    """The registered rule; an id missing from the table is a bug (``KeyError``), never a guess."""
    return RULES[rule_id]


def exit_code_for(rule_ids: Iterable[str]) -> int:
    """The exit code of an error carrying these rules: the category that takes precedence wins."""
    categories = {lookup(rule_id).category for rule_id in rule_ids}
    if not categories:
        raise ValueError("an error needs at least one rule")
    return min(categories, key=lambda c: c.precedence).exit_code


def markdown_table() -> str:
    """The rule table of ``docs/policy.md``, generated so the docs cannot drift from this module."""
    lines = ["| rule id | category | exit | meaning |", "| --- | --- | --- | --- |"]
    for rule in RULES.values():
        lines.append(f"| `{rule.id}` | {rule.category.label} | {rule.exit_code} | {rule.doc} |")
    return "\n".join(lines) + "\n"


def _write_into(path: str) -> None:
    """Replace the table between ``<!-- rules:begin -->`` and ``<!-- rules:end -->`` in ``path``."""
    from pathlib import Path

    begin, end = "<!-- rules:begin -->\n", "<!-- rules:end -->"
    text = Path(path).read_text(encoding="utf-8")
    head, rest = text.split(begin, 1)
    Path(path).write_text(head + begin + markdown_table() + end + rest.split(end, 1)[1], encoding="utf-8")


if __name__ == "__main__":  # python -m runner.rules [docs/policy.md]
    import sys

    if len(sys.argv) > 1:
        _write_into(sys.argv[1])
    else:
        print(markdown_table(), end="")
