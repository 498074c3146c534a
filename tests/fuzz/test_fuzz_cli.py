"""Property: whatever manifest and policy a user writes, ``sandrun check`` ends in a documented exit code.

Hypothesis builds structure-aware documents: the fields Sandrun knows, each either a plausible value
or a hostile one (huge numbers in any base, control characters and line breaks in keys and values,
paths through symlink loops and backslashes, text that is not WebAssembly, malformed keys, host
patterns and limits), written as YAML flow text with some raw tokens YAML reads specially. Every
document goes through the CLI in-process; no exit 70, no traceback. Example counts are bounded so
the suite stays fast (``SANDRUN_FUZZ_EXAMPLES`` runs more); a failure prints the document, whose
class then gets a test in test_fuzz_regressions.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wasmtime import wat2wasm

from runner.cli import cli

WASM = wat2wasm('(module (func (export "_start")))')
DIGEST = hashlib.sha256(WASM).hexdigest()
DOCUMENTED_EXITS = {0, 2, 3}
#: ``SANDRUN_FUZZ_EXAMPLES=20000`` fuzzes longer, with fresh random examples each run.
_LONG = int(os.environ.get("SANDRUN_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_LONG or 150,
    deadline=None,
    derandomize=not _LONG,  # in the suite, the same examples every run: a red suite is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass(frozen=True)
class Raw:
    """A token written into the YAML as is (a plain scalar YAML may read as a number, an alias...)."""

    text: str

    def __repr__(self) -> str:  # examples print short: some tokens are thousands of digits
        return f"Raw({self.text[:20]!r}{'...' if len(self.text) > 20 else ''})"


def _yaml(node: Any) -> str:
    """Flow-style YAML: JSON for strings (YAML reads JSON), raw tokens as written."""
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, dict):
        return "{" + ", ".join(f"{_yaml(k)}: {_yaml(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(_yaml(v) for v in node) + "]"
    text = json.dumps(node)
    return text.replace("\\ud", "\\\\ud") if isinstance(node, str) else text  # YAML has no surrogates


_RAW = st.sampled_from(
    [
        Raw(token)
        for token in [
            "0x" + "f" * 5000,
            "0o" + "7" * 6000,
            "9" * 5000,
            "1e999",
            ".nan",
            "-.inf",
            "~",
            "0x10",
            "0o17",
            "1_000",
            "&a x",
            "*a",
            "!!str x",
            "<<",
            "yes",
            "2027-12-31",
            "12:30",
        ]
    ]
)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["a\nb", "x\x1b[2J", "\u202eevil", "😀", "a\\b", "../..", "", " ", "::error ::x"]
)
_HOSTILE = st.one_of(
    _RAW,
    _TEXT,
    st.integers(),
    st.integers(min_value=2**63),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(_TEXT, st.integers(), max_size=2),
)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes a hostile one."""
    return st.one_of(valid, valid, valid, _HOSTILE)


def maybe_key(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A mapping key: mostly plausible, sometimes any hashable scalar or raw token."""
    return st.one_of(valid, valid, valid, _RAW, _TEXT, st.integers(), st.booleans())


def with_unknown(mapping: st.SearchStrategy[dict[Any, Any]]) -> st.SearchStrategy[dict[Any, Any]]:
    """Sometimes one more field, its key anything at all (a line break, an escape, a number)."""
    extra = st.dictionaries(st.one_of(_TEXT, _RAW), _HOSTILE, max_size=1)
    return st.tuples(mapping, extra).map(lambda pair: {**pair[0], **pair[1]})


_NAME = maybe(st.sampled_from(["a", "b", "tool", "t", "job-1", "x" * 70, "A", "a.b"]))
_PATH = maybe(
    st.sampled_from(
        [
            "tool.wasm",
            "text.wasm",
            "gone.wasm",
            "data",
            "data/in.txt",
            "loop",
            "loop/x",
            "a\\b",
            "a\\b/tool.wasm",
            "../outside",
            "/etc/passwd",
            "builtin:x",
            ".",
            "link-out",
        ]
    )
)
_SIZE = maybe(st.sampled_from(["1MiB", "64KiB", "0", "1", "1GiB", "10TiB", "-1MiB", "1.5MiB", "2**64"]))
_DURATION = maybe(st.sampled_from(["1s", "30s", "1m", "0s", "100y", "1.5s", "1000000h"]))
_LIMITS = st.fixed_dictionaries(
    {},
    optional={
        "fuel": maybe(st.integers(min_value=-1, max_value=2**70)),
        "memory": _SIZE,
        "timeout": _DURATION,
        "stack": _SIZE,
        "output": _SIZE,
        "disk": _SIZE,
    },
)
_HOST = maybe(
    st.sampled_from(
        [
            "https://api.example.org",
            "https://*.example.org:8443",
            "tcp://10.0.0.0/8:5000..5100",
            "tcp://[2001:db8::]/32:80",
            "*://*:*",
            "http://0x7f.1",
            "https://[::ffff:10.0.0.1]",
            "https://a..b",
            "https://10.0.0.1/8",
            "tcp://1.2.3.4:70000",
        ]
    )
)
_ACTION = maybe(st.sampled_from(["tool.fs.read", "tool.fs.*", "*", "tool.agent.run", "tool.net.http", "**"]))
_MOUNT = st.fixed_dictionaries(
    {"host": _PATH, "guest": maybe(st.sampled_from(["/src", "/", "/a/../b", "//x", "/src/sub", "rel"]))},
    optional={"mode": maybe(st.sampled_from(["ro", "rw"]))},
)
_JOB = with_unknown(
    st.fixed_dictionaries(
        {"name": _NAME, "tool": maybe(st.sampled_from(["t", "nosuch"]))},
        optional={
            "args": maybe(st.lists(_TEXT, max_size=3)),
            "env": maybe(st.dictionaries(maybe_key(st.sampled_from(["LANG", "A=B", ""])), _TEXT, max_size=2)),
            "stdin": _PATH,
            "fs": maybe(st.lists(_MOUNT, max_size=3)),
            "network": maybe(st.fixed_dictionaries({"allow": maybe(st.lists(_HOST, max_size=3))})),
            "limits": maybe(_LIMITS),
            "needs": maybe(st.lists(_NAME, max_size=3)),
            "expect": maybe(st.fixed_dictionaries({"exit_code": maybe(st.integers(-1, 300))})),
            "program_name": _NAME,
            "invoke": _NAME,
            "work_dir": _PATH,
        },
    )
)
_TOOL = st.fixed_dictionaries(
    {"module": _PATH, "sha256": maybe(st.sampled_from([DIGEST, "0" * 64, "A" * 64, "x"]))},
    optional={
        "version": maybe(st.sampled_from(["1.0.0", "1", "v1.0"])),
        "actions": maybe(st.lists(_ACTION, max_size=3)),
        "signature": maybe(
            st.fixed_dictionaries({"key": _NAME, "sig": maybe(st.sampled_from(["AAAA", "x" * 88, "=" * 4]))})
        ),
    },
)
MANIFEST = with_unknown(
    st.fixed_dictionaries(
        {
            "apiVersion": maybe(st.just("sandrun/v1")),
            "kind": maybe(st.just("Manifest")),
            "metadata": maybe(st.fixed_dictionaries({"name": _NAME})),
            "tools": maybe(st.dictionaries(maybe_key(st.just("t")), _TOOL, min_size=1, max_size=2)),
            "jobs": maybe(st.lists(_JOB, min_size=1, max_size=3)),
        },
    )
)
_KEY = maybe(
    st.sampled_from(
        [
            "u0ArpydXjVcTF/PGplvPldoDy4g7sM1CHn/qP1UbbLQ=",
            "bm90IGEga2V5",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "=",
        ]
    )
)
POLICY = with_unknown(
    st.fixed_dictionaries(
        {
            "apiVersion": maybe(st.just("sandrun/v1")),
            "kind": maybe(st.just("Policy")),
            "metadata": maybe(st.fixed_dictionaries({"name": _NAME})),
        },
        optional={
            "signatures": maybe(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "required": maybe(st.booleans()),
                        "trusted_keys": maybe(
                            st.lists(
                                st.fixed_dictionaries(
                                    {"id": _NAME, "public_key": _KEY},
                                    optional={
                                        "not_after": maybe(st.sampled_from(["2027-12-31", "2027-13-01", "x"]))
                                    },
                                ),
                                max_size=2,
                            )
                        ),
                        "revoked": maybe(st.lists(maybe(st.sampled_from([DIGEST, "a"])), max_size=2)),
                    },
                )
            ),
            "limits": maybe(st.fixed_dictionaries({}, optional={"default": _LIMITS, "max": _LIMITS})),
            "fs": maybe(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "roots": maybe(st.lists(_PATH, max_size=3)),
                        "write": maybe(st.one_of(st.booleans(), st.lists(_PATH, max_size=2))),
                    },
                )
            ),
            "network": maybe(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "allow": maybe(st.lists(_HOST, max_size=3)),
                        "block": maybe(
                            st.lists(maybe(st.sampled_from(["private", "10.0.0.0/8", "x"])), max_size=2)
                        ),
                    },
                )
            ),
            "actions": maybe(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "allow": maybe(st.lists(_ACTION, max_size=3)),
                        "deny": maybe(st.lists(_ACTION, max_size=3)),
                    },
                )
            ),
            "governance": maybe(st.fixed_dictionaries({"max_score": maybe(st.floats(0, 3))})),
        },
    )
)
VALID_POLICY = {
    "apiVersion": "sandrun/v1",
    "kind": "Policy",
    "metadata": {"name": "p"},
    "fs": {"roots": ["."], "write": ["data"]},
    "network": {"allow": ["*://*:*"]},
    "actions": {"allow": ["*"]},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding every kind of path the strategies name."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "tool.wasm").write_bytes(WASM)
    (root / "text.wasm").write_text('(module (func (export "_start")))')
    (root / "data").mkdir()
    (root / "data" / "in.txt").write_text("input")
    (root / "a\\b").mkdir()
    (root / "a\\b" / "tool.wasm").write_bytes(WASM)
    (root / "loop").symlink_to("loop")
    (root / "link-out").symlink_to("/")
    return root


def _check(root: Path, manifest: Any, policy: Any, fmt: str) -> None:
    (root / "m.yaml").write_text(_yaml(manifest) + "\n", encoding="utf-8")
    (root / "policy.yaml").write_text(_yaml(policy) + "\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        [
            "check",
            str(root / "m.yaml"),
            "--policy",
            str(root / "policy.yaml"),
            "--root",
            str(root),
            "--format",
            fmt,
        ],
    )
    output = result.output
    assert result.exit_code in DOCUMENTED_EXITS, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output and "internal error" not in output, output
    if fmt == "json":
        assert json.loads(result.stdout)["ok"] == (result.exit_code == 0)
    elif fmt == "github" and result.exit_code:  # one annotation per line, every line an annotation
        assert all(line.startswith("::error ") for line in result.stdout.splitlines()), result.stdout
    else:
        for line in result.stderr.splitlines():  # one problem, one line, every line a problem
            assert "[" in line or line.startswith("skipped "), line


_FORMAT = st.sampled_from(["text", "text", "json", "github"])


@FUZZ
@given(manifest=MANIFEST, fmt=_FORMAT)
def test_any_manifest_ends_in_a_documented_exit_code(root: Path, manifest: Any, fmt: str) -> None:
    _check(root, manifest, VALID_POLICY, fmt)


@FUZZ
@given(policy=POLICY, manifest=MANIFEST, fmt=_FORMAT)
def test_any_policy_ends_in_a_documented_exit_code(root: Path, policy: Any, manifest: Any, fmt: str) -> None:
    _check(root, manifest, policy, fmt)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.binary(max_size=300) | _TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_as_a_manifest_end_in_a_documented_exit_code(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    root = tmp_path_factory.getbasetemp()
    (root / "bytes.yaml").write_bytes(data)
    (root / "bytes-policy.yaml").write_text(_yaml(VALID_POLICY))
    result = CliRunner().invoke(
        cli,
        ["check", str(root / "bytes.yaml"), "--policy", str(root / "bytes-policy.yaml"), "--root", str(root)],
    )
    assert result.exit_code in DOCUMENTED_EXITS, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


#: Lone surrogates too: what an undecodable byte on the command line becomes.
_ANY_CHARACTER = st.characters(exclude_categories=())


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    args=st.lists(st.text(_ANY_CHARACTER, max_size=8), max_size=4),
    env=st.dictionaries(st.text(_ANY_CHARACTER, max_size=6), st.text(_ANY_CHARACTER, max_size=6), max_size=2),
    program_name=st.none() | st.text(_ANY_CHARACTER, max_size=8),
)
def test_any_exec_flags_make_the_same_manifest_or_one_clear_error(
    tmp_path_factory: pytest.TempPathFactory, args: list[str], env: dict[str, str], program_name: str | None
) -> None:
    """Every character, surrogates and characters above U+FFFF included, reaches the job as given."""
    from runner.api import exec_manifest
    from runner.errors import InputError

    module = tmp_path_factory.getbasetemp() / "exec.wasm"
    module.write_bytes(WASM)
    try:
        document = exec_manifest(module, args, env=env, program_name=program_name)
    except InputError as error:
        assert {v.rule_id for v in error.violations} <= {"input.encoding", *_SCHEMA_RULES}, error
        return
    job = document.data["jobs"][0]
    assert job["args"] == args
    assert job.get("env", {}) == env
    assert job.get("program_name") == program_name


_SCHEMA_RULES = {"schema.pattern", "schema.min-length", "schema.type", "schema.format"}
