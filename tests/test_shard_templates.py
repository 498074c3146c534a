"""The sharded CI templates (issue 14, item 3), read as the CI systems read them and run for real.

Each template's own shard and merge commands run here, on a small project, with the variables the
CI system would set (a GitHub matrix's values, GitLab's CI_NODE_INDEX/CI_NODE_TOTAL, Kubernetes'
JOB_COMPLETION_INDEX); only ``python -m pip`` is stubbed. The merged report must be the whole plan's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "cli"))
from shard_project import POLICY, make_shard_project  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "ci" / "k8s"
KEYS = REPO / "tests" / "keys"
SHA = "0123456789abcdef0123456789abcdef01234567"
PIN = {"SANDRUN_REPO": "https://example.org/sandrun.git", "SANDRUN_REF": SHA, "WASMTIME_VERSION": "50.0.1"}
EXPECTED_JOBS = ["a", "b", "c", "d", "e", "f", "g"]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def public_key_b64() -> str:
    return (KEYS / "examples-2026.pub").read_text(encoding="ascii").strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_shard_project(tmp_path_factory.mktemp("templates") / "project")
    compiled = subprocess.run(
        [sys.executable, "-m", "runner", "compile", "manifests", "--policy", POLICY, "-o", "plan.json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr
    return root


def shell(
    script: str, env: dict[str, str], cwd: Path, tmp: Path, *, shell: str = "bash"
) -> subprocess.CompletedProcess[str]:
    """Run a template's script with ``python -m pip`` stubbed (logged) and ``sandrun`` the real CLI."""
    stub = tmp / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "python").write_text(
        f'#!/bin/sh\nif [ "$1 $2" = "-m pip" ]; then echo "pip $*" >> "{tmp}/pip-calls"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    (stub / "sandrun").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m runner "$@"\n')
    for tool in ("python", "sandrun"):
        (stub / tool).chmod(0o755)
    full = {
        "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp / "home"),
        "CI": "true",
        "SANDRUN_SIGNING_KEY": (KEYS / "examples-2026.key").read_text(encoding="ascii"),
        "SANDRUN_PUBLIC_KEY": public_key_b64(),
        "SANDRUN_POLICY": POLICY,
        **PIN,
        **env,
    }
    argv = ["bash", "-eo", "pipefail", "-c", script] if shell == "bash" else ["sh", "-c", script]
    return subprocess.run(argv, env=full, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def merged_jobs(report: Path) -> list[str]:
    return [job["name"] for job in json.loads(report.read_text())["jobs"]]


# -- Kubernetes --------------------------------------------------------------------------------


def container(path: Path) -> dict[str, Any]:
    (only,) = load(path)["spec"]["template"]["spec"]["containers"]
    return dict(only)


def literal_env(path: Path) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(path)["env"] if "value" in e}


@pytest.mark.parametrize(
    ("manifest", "schema"),
    [
        ("shards.yaml", "job-batch-v1.json"),
        ("merge.yaml", "job-batch-v1.json"),
        ("volume.yaml", "persistentvolumeclaim-v1.json"),
    ],
)
def test_kubernetes_manifests_validate_against_the_vendored_kubernetes_schema(
    manifest: str, schema: str
) -> None:
    validator = jsonschema.Draft202012Validator(json.loads((K8S / "schema" / schema).read_text()))
    document = load(K8S / manifest)
    assert list(validator.iter_errors(document)) == []
    document["spec"]["unknownField"] = 1  # the schema is strict: a typo would not pass
    assert list(validator.iter_errors(document))


def test_the_indexed_job_retries_per_index_and_fails_an_index_on_oom_or_bad_input() -> None:
    spec = load(K8S / "shards.yaml")["spec"]
    assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] >= 1
    assert str(spec["completions"]) == literal_env(K8S / "shards.yaml")["SANDRUN_SHARD_TOTAL"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    fail_index = [r["onExitCodes"]["values"] for r in rules if r["action"] == "FailIndex"]
    assert [137] in fail_index and [2, 3, 4] in fail_index
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    volume = load(K8S / "volume.yaml")["metadata"]["name"]
    for path in (K8S / "shards.yaml", K8S / "merge.yaml"):
        (claim,) = [v for v in load(path)["spec"]["template"]["spec"]["volumes"] if v["name"] == "work"]
        assert claim["persistentVolumeClaim"]["claimName"] == volume


@pytest.mark.parametrize("manifest", ["shards.yaml", "merge.yaml"])
def test_the_pods_that_run_untrusted_modules_hold_no_api_token_and_are_locked_down(manifest: str) -> None:
    """A guest that escaped Wasmtime would find no service-account token to call the cluster's
    API with, no other services' addresses in its environment, the runtime's seccomp filter, no
    capabilities and a read-only image (writes only to the work volume and an emptyDir /tmp)."""
    pod = load(K8S / manifest)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    (only,) = pod["containers"]
    assert only["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    mounts = {m["mountPath"]: m["name"] for m in only["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts == {"/work": "work", "/tmp": "tmp"} and volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    home = {e["name"]: e.get("value") for e in only["env"]}["HOME"]
    assert home.startswith("/tmp/")  # pip --user and the module cache write there


def test_the_kubernetes_shard_commands_run_here_then_merge(project: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "project").symlink_to(project)
    shards, merge = container(K8S / "shards.yaml"), container(K8S / "merge.yaml")
    assert shards["command"] == ["sh", "-c"] and merge["command"] == ["sh", "-c"]
    env = {
        **literal_env(K8S / "shards.yaml"),
        "SANDRUN_WORK": str(work),
        "HOME": str(tmp_path / "home"),
        "SANDRUN_POLICY": POLICY,
    }
    total = int(env["SANDRUN_SHARD_TOTAL"])
    for index in range(total):
        ran = shell(
            shards["args"][0], {**env, "JOB_COMPLETION_INDEX": str(index)}, tmp_path, tmp_path, shell="sh"
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr  # hello/g failing is a result, not a pod failure
    # a retried pod: the same index again, into the same folder
    again = shell(shards["args"][0], {**env, "JOB_COMPLETION_INDEX": "0"}, tmp_path, tmp_path, shell="sh")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (work / "shards").iterdir()) == [f"shard-{i}" for i in range(total)]
    merged = shell(
        merge["args"][0],
        {**literal_env(K8S / "merge.yaml"), "SANDRUN_WORK": str(work)},
        tmp_path,
        tmp_path,
        shell="sh",
    )
    assert merged.returncode == 1, merged.stdout + merged.stderr  # the plan's one failing job
    assert "signed audit checkpoint (merged):" in merged.stdout
    assert merged_jobs(work / "merged" / "report.json") == EXPECTED_JOBS
    records = [json.loads(line) for line in (work / "merged" / "audit.jsonl").read_text().splitlines()]
    first = next(r["data"] for r in records if r["kind"] == "merge.shard" and r["data"]["index"] == 1)
    assert [a["taken"] for a in first["attempts"]] == [False, True]  # the retry's attempt was taken
    assert (tmp_path / "pip-calls").read_text().count(
        f"sandrun-wasm @ git+{PIN['SANDRUN_REPO']}@{SHA}"
    ) == total + 2


@pytest.mark.parametrize("missing", ["SANDRUN_SIGNING_KEY", "SANDRUN_REF"])
def test_a_kubernetes_shard_without_its_key_or_pin_stops_before_installing(
    missing: str, tmp_path: Path
) -> None:
    env = {**literal_env(K8S / "shards.yaml"), "JOB_COMPLETION_INDEX": "0", missing: ""}
    ran = shell(container(K8S / "shards.yaml")["args"][0], env, tmp_path, tmp_path, shell="sh")
    assert ran.returncode == 2 and missing in ran.stdout  # 2: FailIndex, not retried
    assert not (tmp_path / "pip-calls").exists()


# -- GitHub Actions and GitLab -----------------------------------------------------------------

GITHUB = REPO / "ci" / "github-actions-sharded.yml"
GITLAB = REPO / "ci" / "gitlab-ci-sharded.yml"


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in job["steps"] if s.get("name", "").startswith(name))


def expand(text: str, values: dict[str, str]) -> str:
    """GitHub's ``${{ expr }}`` replaced by the values the runner would put there."""
    return re.sub(r"\$\{\{\s*([^}]+?)\s*\}\}", lambda m: values[m.group(1)], text)


def test_github_shards_then_merges_with_the_matrix_values(project: Path, tmp_path: Path) -> None:
    project = Path(shutil.copytree(project, tmp_path / "checkout"))
    workflow = load(GITHUB)
    jobs = workflow["jobs"]
    assert jobs["shard"]["strategy"]["fail-fast"] is False and jobs["shard"]["needs"] == "compile"
    assert jobs["merge"]["if"] == "${{ !cancelled() }}" and set(jobs["merge"]["needs"]) == {
        "compile",
        "shard",
    }
    installs = {step(job, "Install Sandrun")["run"] for job in jobs.values()}
    assert len(installs) == 1  # the same pinned install in every job
    for name in ("shard", "merge"):
        names = [s.get("name", "") for s in jobs[name]["steps"]]
        assert names[0] == "Require the signing key"
    matrix = jobs["shard"]["strategy"]["matrix"]["shard"]
    run = step(jobs["shard"], "Run shard")
    for index in matrix:
        values = {
            "matrix.shard": str(index),
            "strategy.job-total": str(len(matrix)),
            "secrets.SANDRUN_SIGNING_KEY": "",
        }
        env = {k: expand(str(v), values) for k, v in run["env"].items() if k != "SANDRUN_SIGNING_KEY"}
        ran = shell(run["run"], env, project, tmp_path)
        assert ran.returncode in (0, 1), ran.stderr
        (project / "shards").mkdir(exist_ok=True)
        (project / env["OUT"]).rename(project / "shards" / env["OUT"])  # download-artifact's layout
    merge = step(jobs["merge"], "Verify and merge")
    merged = shell(merge["run"], {}, project, tmp_path)
    assert merged.returncode == 1, merged.stderr
    assert merged_jobs(project / "sandrun-out" / "report.json") == EXPECTED_JOBS
    uploads = [
        s["with"]["path"]
        for s in jobs["merge"]["steps"]
        if s.get("uses", "").startswith("actions/upload-artifact")
    ]
    assert "sandrun-out/junit.xml" in uploads and "sandrun-out/checkpoint.txt" in uploads
    summary = step(jobs["merge"], "Step summary")
    assert summary["if"] == "always()" and "GITHUB_STEP_SUMMARY" in summary["run"]


def test_gitlab_parallel_shards_then_merges(project: Path, tmp_path: Path) -> None:
    project = Path(shutil.copytree(project, tmp_path / "checkout"))
    pipeline = load(GITLAB)
    base, shard, merge = pipeline[".sandrun"], pipeline["sandrun-shard"], pipeline["sandrun-merge"]
    assert shard["extends"] == merge["extends"] == ".sandrun" and merge["when"] == "always"
    assert merge["artifacts"]["reports"]["junit"] == "sandrun-out/junit.xml"
    guard = "\n".join(base["before_script"][:2])
    refused = shell(guard, {"SANDRUN_SIGNING_KEY": ""}, tmp_path, tmp_path)
    assert refused.returncode == 1 and "unsigned" in refused.stdout
    total = shard["parallel"]
    for index in range(1, total + 1):
        env = {"CI_NODE_INDEX": str(index), "CI_NODE_TOTAL": str(total)}
        ran = shell("\n".join(shard["script"]), env, project, tmp_path)
        assert ran.returncode in (0, 1), ran.stderr
    merged = shell("\n".join(merge["script"]), {}, project, tmp_path)
    assert merged.returncode == 1, merged.stderr
    assert merged_jobs(project / "sandrun-out" / "report.json") == EXPECTED_JOBS
