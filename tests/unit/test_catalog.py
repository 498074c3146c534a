"""The built-in catalog: pinned bytes, reproducible rebuilds, and builtin:NAME under policy.

Adversarial cases assert rule ids: a manifest cannot shadow a built-in with its own bytes, cannot
name one by a path, cannot shed its gate actions or effects, and a revoked digest is denied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasmtime
import yaml

from runner import catalog
from runner.api import compile_manifests
from runner.catalog import CATALOG
from runner.errors import PolicyDenied
from runner.plan import Plan
from runner.sandbox import Runtime

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "runner" / "catalog"
TODAY = dt.date(2026, 11, 21)
CAT = CATALOG["cat"]


# -- the shipped bytes ----------------------------------------------------------------------------
def test_every_shipped_module_has_the_digest_the_catalog_pins() -> None:
    wrong = {
        b.name: hashlib.sha256((FOLDER / f"{b.name}.wasm").read_bytes()).hexdigest()
        for b in CATALOG.values()
        if hashlib.sha256((FOLDER / f"{b.name}.wasm").read_bytes()).hexdigest() != b.sha256
    }
    assert wrong == {}, f"rebuilt? paste these digests into runner/catalog/__init__.py: {wrong}"
    for builtin in CATALOG.values():
        catalog.check_bytes(builtin)  # the package's own path, as the compiler reads it


def test_sources_modules_and_table_name_the_same_tools() -> None:
    sources = {p.stem for p in (FOLDER / "src").glob("*.c")}
    modules = {p.stem for p in FOLDER.glob("*.wasm")}
    assert sources == modules == set(CATALOG)


@pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None, reason="needs ziglang (pip install -e '.[dev]')"
)
def test_rebuilding_elsewhere_gives_the_same_bytes(tmp_path: Path) -> None:
    """No timestamps and no paths in the output: a build in another folder is byte-identical."""
    shutil.copytree(FOLDER / "src", tmp_path / "src")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        ["sh", str(REPO / "scripts" / "build-wasm.sh"), str(tmp_path), "-Wl,-z,stack-size=262144"],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    rebuilt = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.glob("*.wasm")}
    assert rebuilt == {b.name: b.sha256 for b in CATALOG.values()}


@pytest.mark.parametrize(
    "text", ["builtin:../cat", "builtin:cat/../cat", "cat", "builtin:", "builtin:CAT", "builtin:cat "]
)
def test_lookup_matches_exact_table_names_only(text: str) -> None:
    assert catalog.lookup(text) is None
    assert catalog.lookup("builtin:cat") is CAT


def test_check_bytes_refuses_a_changed_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evil = tmp_path / "cat.wasm"
    evil.write_bytes((FOLDER / "true.wasm").read_bytes())
    monkeypatch.setattr(catalog, "module_path", lambda builtin: evil)
    with pytest.raises(catalog.CorruptBuiltin):
        catalog.check_bytes(CAT)


# -- builtin:NAME under policy --------------------------------------------------------------------
POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {{name: test}}
signatures:
  required: {required}
  revoked: {revoked}
fs:
  roots: [.]
actions:
  allow: {allow}
  deny: {deny}
governance: {{max_score: {max_score}}}
"""


def _compile(
    root: Path,
    tools: str,
    *,
    required: bool = False,
    revoked: tuple[str, ...] = (),
    allow: str = '["tool.fs.read"]',
    deny: str = "[]",
    max_score: float = 0.6,
    jobs: str = "  - {name: show, tool: t, args: [/d/a.txt], fs: [{host: ./data, guest: /d}]}\n",
) -> Plan:
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "a.txt").write_text("a\n")
    policy = root / "policy.yaml"
    policy.write_text(
        POLICY.format(
            required=str(required).lower(), revoked=list(revoked), allow=allow, deny=deny, max_score=max_score
        )
    )
    manifest = root / "manifest.yaml"
    manifest.write_text(
        f"apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {{name: m}}\ntools:\n{tools}jobs:\n{jobs}"
    )
    return compile_manifests([manifest], policy, root=root, today=TODAY)


def _denied(root: Path, tools: str, **kwargs: object) -> list[tuple[str, str]]:
    with pytest.raises(PolicyDenied) as caught:
        _compile(root, tools, **kwargs)  # type: ignore[arg-type]
    return [(v.rule_id, v.location.pointer if v.location else "") for v in caught.value.violations]


def test_a_builtin_needs_no_digest_and_the_plan_records_its_identity(tmp_path: Path) -> None:
    plan = _compile(tmp_path, "  t: {module: 'builtin:cat'}\n")
    (tool,) = plan.tools
    assert (tool.module, tool.sha256, tool.signer, tool.signature_verified) == (
        "builtin:cat",
        CAT.sha256,
        "builtin",
        False,
    )
    assert tool.actions == ("tool.fs.read",)  # the catalog's, though the manifest lists none
    (job,) = plan.jobs
    assert (job.module, job.module_sha256, job.program_name) == ("builtin:cat", CAT.sha256, "t")
    # ro mount (privacy 0.1) + tool.fs.read (privacy 0.1) + cat's own effect (privacy 0.1)
    assert job.score == "0.3000"


def test_signatures_required_accepts_a_builtin_as_signed_by_the_package(tmp_path: Path) -> None:
    plan = _compile(tmp_path, "  t: {module: 'builtin:cat'}\n", required=True)
    assert plan.tools[0].signer == "builtin"
    (tmp_path / "x.wasm").write_bytes((FOLDER / "cat.wasm").read_bytes())  # the same bytes, as a file
    assert _denied(tmp_path, f"  t: {{module: ./x.wasm, sha256: {CAT.sha256}}}\n", required=True) == [
        ("signature.missing", "/tools/t")
    ]


def test_a_manifest_cannot_pin_a_builtin_to_other_bytes(tmp_path: Path) -> None:
    other = CATALOG["true"].sha256
    assert _denied(tmp_path, f"  t: {{module: 'builtin:cat', sha256: {other}}}\n") == [
        ("tool.digest", "/tools/t/sha256")
    ]
    # pinning the right digest is allowed (a manifest may freeze the catalog version it was written for)
    assert (
        _compile(tmp_path, f"  t: {{module: 'builtin:cat', sha256: {CAT.sha256}}}\n").tools[0].sha256
        == CAT.sha256
    )


def test_a_file_whose_plan_path_would_read_as_a_builtin_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "builtin:cat"
    evil.write_bytes(b"\0asm\x01\0\0\0")
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    assert _denied(tmp_path, f"  t: {{module: './builtin:cat', sha256: {digest}}}\n") == [
        ("tool.builtin-shadow", "/tools/t/module")
    ]


def test_unknown_names_are_refused_with_a_rule_id(tmp_path: Path) -> None:
    assert _denied(tmp_path, "  t: {module: 'builtin:nope'}\n") == [
        ("tool.builtin-unknown", "/tools/t/module")
    ]


def test_a_path_after_builtin_is_refused_by_the_schema(tmp_path: Path) -> None:
    from runner.errors import InputError

    with pytest.raises(InputError) as caught:
        _compile(tmp_path, "  t: {module: 'builtin:../x'}\n")
    assert [(v.rule_id, v.location.pointer) for v in caught.value.violations if v.location] == [
        ("schema.pattern", "/tools/t/module")
    ]


def test_a_revoked_builtin_digest_is_denied(tmp_path: Path) -> None:
    assert _denied(tmp_path, "  t: {module: 'builtin:cat'}\n", revoked=(CAT.sha256,)) == [
        ("tool.revoked", "/tools/t/module")
    ]
    # revoking cat leaves the other built-ins alone: each has its own module and digest
    _compile(tmp_path, "  t: {module: 'builtin:wc'}\n", revoked=(CAT.sha256,))


def test_a_builtin_cannot_shed_its_gate_actions(tmp_path: Path) -> None:
    denied = _denied(tmp_path, "  t: {module: 'builtin:cat', actions: []}\n", allow="[]")
    assert denied == [("actions.not-allowed", "/tools/t/module")]
    denied = _denied(tmp_path, "  t: {module: 'builtin:grep'}\n", deny='["tool.fs.*"]')
    assert denied == [("actions.denied", "/tools/t/module")]
    # echo needs no action at all: allowed by an empty allow list
    _compile(tmp_path, "  t: {module: 'builtin:echo'}\n", allow="[]", jobs="  - {name: e, tool: t}\n")


def test_the_governance_score_counts_the_builtin_effects(tmp_path: Path) -> None:
    assert _denied(tmp_path, "  t: {module: 'builtin:cat'}\n", max_score=0.25) == [
        ("governance.score", "/jobs/0")
    ]
    _compile(tmp_path, "  t: {module: 'builtin:wc'}\n", max_score=0.25)  # wc has no effect of its own


def test_changed_package_bytes_are_refused_at_compile_and_at_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _compile(tmp_path, "  t: {module: 'builtin:cat'}\n")
    evil = tmp_path / "evil.wasm"
    evil.write_bytes((FOLDER / "true.wasm").read_bytes())
    monkeypatch.setattr(catalog, "module_path", lambda builtin: evil)
    assert _denied(tmp_path, "  t: {module: 'builtin:cat'}\n") == [
        ("tool.builtin-corrupt", "/tools/t/module")
    ]
    with Runtime(cache_dir=tmp_path / "cache") as runtime, pytest.raises(PolicyDenied) as caught:
        runtime.run(plan.jobs[0], tmp_path)
    assert caught.value.violations[0].rule_id == "module.digest-changed"


def test_a_plan_naming_an_unknown_builtin_is_refused_by_the_runtime(tmp_path: Path) -> None:
    from dataclasses import replace

    from runner.errors import InputError

    plan = _compile(tmp_path, "  t: {module: 'builtin:cat'}\n")
    forged = replace(plan.jobs[0], module="builtin:../../tests/fixtures/probe")
    with Runtime(cache_dir=tmp_path / "cache") as runtime, pytest.raises(InputError) as caught:
        runtime.run(forged, tmp_path)
    assert caught.value.violations[0].rule_id == "module.builtin-unknown"


def test_the_builtin_runs_and_reads_only_its_mount(tmp_path: Path) -> None:
    plan = _compile(tmp_path, "  t: {module: 'builtin:cat'}\n")
    with Runtime(cache_dir=tmp_path / "cache") as runtime:
        outcome = runtime.run(plan.jobs[0], tmp_path)
    assert outcome.exit_code == 0 and outcome.stdout == b"a\n"


# -- the checkers against Python's own parsers, on seeded mutations ---------------------------------
def _checker(name: str, tmp_path: Path) -> Callable[[bytes], int]:
    """Run the built-in NAME on one input, in-process (fast enough for hundreds of inputs)."""
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, str(FOLDER / f"{name}.wasm"))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()

    def check(data: bytes) -> int:
        (tmp_path / "input").write_bytes(data)
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [name, "/f/input"]
        wasi.preopen_dir(str(tmp_path), "/f")
        wasi.stdout_file = str(tmp_path / "out")
        store.set_wasi(wasi)
        try:
            linker.instantiate(store, module).exports(store)["_start"](store)  # type: ignore[operator]
        except wasmtime.ExitTrap as exc:
            return exc.code
        return 0

    return check


def _mutants(seeds: list[bytes], pieces: list[bytes], count: int) -> Iterator[bytes]:
    """Seeded edits: inserted pieces, cut bytes, copied runs (the same inputs on every run)."""
    rnd = random.Random(20261128)
    for _ in range(count):
        text = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randrange(len(text) + 1)
            op = rnd.random()
            if op < 0.4:
                text[at:at] = rnd.choice(pieces)
            elif op < 0.7:
                del text[at : at + rnd.randint(1, 3)]
            else:
                start = rnd.randrange(len(text) + 1)
                text[at:at] = text[start : start + rnd.randint(1, 20)]
        yield bytes(text)


def test_yaml_check_accepts_nothing_that_pyyaml_refuses(tmp_path: Path) -> None:
    """Every mutation of the repository's YAML files that the checker accepts must load with
    PyYAML: the subset is YAML, never beyond it."""
    check = _checker("yaml-check", tmp_path)
    seeds = [
        p.read_bytes()
        for p in sorted(REPO.glob("tests/cases/*/*.yaml")) + sorted(REPO.glob("policies/*.yaml"))
    ]
    pieces = [
        b"- ",
        b": ",
        b"'",
        b'"',
        b"[",
        b"]",
        b"{",
        b"}",
        b",",
        b"#",
        b"|",
        b">",
        b"\n",
        b"  ",
        b"-",
        b":",
    ]
    pieces += [b"?", b"\t", b"\\", b"---\n", b"!", b"&", b"*", b"%"]
    accepted = 0
    for text in _mutants([s for s in seeds if len(s) < 4000], pieces, 600):
        code = check(text)
        assert code in (0, 1)
        if code == 0:
            accepted += 1
            try:
                list(yaml.safe_load_all(text))
            except yaml.YAMLError as exc:
                pytest.fail(f"yaml-check accepted what PyYAML refuses: {text!r}: {exc}")
    assert accepted > 50  # enough valid documents among the mutations to mean something


def _strict_json(text: bytes) -> None:
    """Python's json, made as strict as json-check: UTF-8, no BOM, no NaN, no duplicate keys,
    no lone surrogates."""

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        if len({k for k, _ in items}) != len(items):
            raise ValueError("duplicate key")
        return dict(items)

    def constant(name: str) -> None:
        raise ValueError(name)

    decoded = text.decode("utf-8")
    if decoded.startswith("\ufeff"):
        raise ValueError("byte order mark")
    value = json.loads(decoded, object_pairs_hook=pairs, parse_constant=constant)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate escape fails here


def test_json_check_agrees_with_a_strict_python_json(tmp_path: Path) -> None:
    check = _checker("json-check", tmp_path)
    seeds = [
        b'{"a": [1, 2.5e-3, -0, true, false, null], "b": {"c": "x\\u00e9\\ud83d\\ude00\\n"}, "d": []}',
        b'[1, "two", {"3": 4}]',
        b"-12.5E+3",
    ]
    pieces = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"\\ud800", b"0", b"-", b".", b"e"]
    pieces += [b" ", b"\n", b"\xc3\xa9", b"\xff", b"\x00", b"tru", b"NaN", b'"a":1,', b"\xed\xa0\x80"]
    accepted = 0
    for text in _mutants(seeds, pieces, 600):
        try:
            _strict_json(text)
            expected = 0
        except (ValueError, UnicodeError):
            expected = 1
        assert check(text) == expected, text
        accepted += expected == 0
    assert accepted > 30  # some valid ones among the mutations: both answers are exercised
