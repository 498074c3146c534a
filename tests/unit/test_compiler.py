"""Compiler behaviour beyond the one-manifest cases: determinism, defaults, collecting every problem."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import pytest

from runner.api import compile_manifests
from runner.errors import InputError, PolicyDenied

CASES = Path(__file__).resolve().parents[1] / "cases"
TODAY = dt.date(2026, 11, 21)


def _copy_cases(dest: Path) -> Path:
    shutil.copytree(CASES, dest, symlinks=True)
    return dest


def test_same_tree_in_two_places_compiles_to_the_same_plan_hash(tmp_path: Path) -> None:
    hashes = set()
    for place in ("a/deeper/place", "b"):
        root = _copy_cases(tmp_path / place)
        plan = compile_manifests(
            [root / "valid" / "manifest.yaml"], root / "_shared" / "policy.yaml", root=root, today=TODAY
        )
        assert all(not m.host.startswith("/") for job in plan.jobs for m in job.mounts)
        hashes.add(plan.sha256)
    assert len(hashes) == 1


def test_plan_records_inputs_policy_and_resolved_jobs() -> None:
    plan = compile_manifests(
        [CASES / "valid" / "manifest.yaml"], CASES / "_shared" / "policy.yaml", root=CASES, today=TODAY
    )
    paths = {item.path for item in plan.inputs}
    assert paths == {
        "valid/manifest.yaml",
        "_shared/policy.yaml",
        "_shared/hello.wasm",
        "_shared/data/input.txt",
    }
    first, second = plan.jobs
    assert first.mounts[0].host == "_shared/data" and first.mounts[1].mode == "rw"
    assert first.fs_scope == "readwrite" and second.fs_scope == "none"
    assert first.network is not None and first.network.block == ("private",)
    assert (
        first.limits.fuel == 1_000_000 and first.limits.memory == 32 << 20 and first.limits.timeout_ms == 2000
    )
    # second sets no limits: the policy's defaults; limits.max.fuel alone meters nothing
    assert second.limits.memory == 16 << 20 and second.limits.output == 64 << 10
    assert second.limits.fuel is None
    assert second.needs == ("valid/first",)
    assert plan.tools[0].signer == "examples-2026" and plan.tools[0].signature_verified
    assert plan.policy.name == "cases" and len(plan.policy.sha256) == 64


def test_key_is_valid_through_its_not_after_day_and_denied_the_day_after() -> None:
    policy = CASES / "_shared" / "policy.yaml"
    compile_manifests([CASES / "valid" / "manifest.yaml"], policy, root=CASES, today=dt.date(2099, 12, 31))
    with pytest.raises(PolicyDenied) as caught:
        compile_manifests([CASES / "valid" / "manifest.yaml"], policy, root=CASES, today=dt.date(2100, 1, 1))
    assert {v.rule_id for v in caught.value.violations} == {"signature.expired-key"}


def test_problems_of_every_file_come_out_together_and_invalid_input_wins() -> None:
    paths = [
        CASES / n / "manifest.yaml" for n in ("yaml-duplicate-key", "sha256-mismatch", "schema-unknown-field")
    ]
    with pytest.raises(InputError) as caught:
        compile_manifests(paths, CASES / "_shared" / "policy.yaml", root=CASES, today=TODAY)
    rules = {v.rule_id for v in caught.value.violations}
    assert {"yaml.duplicate-key", "tool.digest", "schema.unknown-field"} <= rules
    assert caught.value.exit_code == 2


def test_a_bad_policy_is_reported_with_its_own_file_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\nlimits:\n  max: {memory: lots}\n"
    )
    with pytest.raises(InputError) as caught:
        compile_manifests([CASES / "valid" / "manifest.yaml"], policy, root=CASES, today=TODAY)
    violation = caught.value.violations[0]
    assert violation.location is not None
    assert violation.location.file == str(policy) and violation.location.line == 5
    assert violation.location.pointer == "/limits/max/memory"


def test_duplicate_manifest_names_across_files_are_invalid_input(tmp_path: Path) -> None:
    root = _copy_cases(tmp_path / "cases")
    shutil.copytree(root / "valid", root / "valid-again")
    with pytest.raises(InputError) as caught:
        compile_manifests(
            [root / "valid" / "manifest.yaml", root / "valid-again" / "manifest.yaml"],
            root / "_shared" / "policy.yaml",
            root=root,
            today=TODAY,
        )
    assert [v.rule_id for v in caught.value.violations] == ["manifest.duplicate-name"]


def test_unknown_key_under_optional_signatures_counts_as_unsigned() -> None:
    plan = compile_manifests(
        [CASES / "signature-unknown-key" / "manifest.yaml"],
        CASES / "_shared" / "policy.yaml",
        root=CASES,
        today=TODAY,
    )
    assert plan.tools[0].signer is None and not plan.tools[0].signature_verified


def test_a_module_named_by_many_tools_and_symlinks_is_read_and_validated_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 MiB manifest naming one 64 MiB module from thousands of tools (or symlinks to it) made
    ``check`` read, hash and validate it thousands of times: tens of minutes of CI per manifest."""
    from wasmtime import Module

    root = _copy_cases(tmp_path / "cases")
    shared = root / "_shared"
    for index in range(3):
        (shared / f"alias{index}.wasm").symlink_to("hello.wasm")
    modules = ["../_shared/hello.wasm"] * 3 + [f"../_shared/alias{i}.wasm" for i in range(3)]
    sha256 = hashlib.sha256((shared / "hello.wasm").read_bytes()).hexdigest()
    tools = "".join(f"  t{i}: {{module: {m}, sha256: {sha256}}}\n" for i, m in enumerate(modules))
    manifest = root / "many" / "manifest.yaml"
    manifest.parent.mkdir()
    manifest.write_text(
        "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: many}\ntools:\n"
        + tools
        + "jobs:\n  - {name: j, tool: t0}\n"
    )
    policy = root / "features.yaml"  # the shared policy, denying one proposal: modules get validated
    policy.write_text((shared / "policy.yaml").read_text() + "modules: {wasm_features: {gc: false}}\n")
    hello = (shared / "hello.wasm").resolve()
    reads: list[Path] = []
    validations: list[int] = []
    real_read, real_validate = Path.read_bytes, Module.validate
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real_read(self))
    monkeypatch.setattr(
        Module, "validate", staticmethod(lambda e, d: validations.append(len(d)) or real_validate(e, d))
    )
    plan = compile_manifests([manifest], policy, root=root, today=TODAY)
    assert len(plan.tools) == 6 and len({tool.sha256 for tool in plan.tools}) == 1
    assert [path for path in reads if path.resolve() == hello] == [hello]
    assert len(validations) == 1


def test_a_stdin_file_is_hashed_as_it_is_read_never_held_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stdin file may be any file under a root (a pack file of the checkout, gigabytes): the
    compiler read it whole into memory to hash it."""
    root = _copy_cases(tmp_path / "cases")
    stdin = root / "_shared" / "data" / "input.txt"
    stdin.write_bytes(b"x" * (3 << 20))
    reads: list[Path] = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real_read(self))
    plan = compile_manifests(
        [root / "valid" / "manifest.yaml"], root / "_shared" / "policy.yaml", root=root, today=TODAY
    )
    digests = {item.path: item.sha256 for item in plan.inputs}
    assert digests["_shared/data/input.txt"] == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
    assert stdin.resolve() not in [path.resolve() for path in reads]
