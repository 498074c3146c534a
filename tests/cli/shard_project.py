"""A project with jobs worth sharding: a ``needs`` chain, a writer and a reader of one folder, loners."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from cli_process import sandrun
from cli_project import make_project

POLICY = "policies/lenient.yaml"
KEYS = Path(__file__).resolve().parents[1] / "keys"
KEY, PUB = str(KEYS / "examples-2026.key"), str(KEYS / "examples-2026.pub")

JOBS = """\
  - {{name: a, tool: hello}}
  - {{name: b, tool: hello, needs: [a]}}
  - {{name: c, tool: hello, args: [c]}}
  - {{name: d, tool: hello, fs: [{{host: ../data, guest: /d, mode: rw}}]}}
  - {{name: e, tool: hello, fs: [{{host: ../data, guest: /d, mode: ro}}]}}
  - {{name: f, tool: hello, args: [f]}}
  - {{name: g, tool: hello, args: [g], expect: {{exit_code: 3}}}}
"""


def make_shard_project(root: Path) -> Path:
    """``root`` with one manifest of seven jobs (one expected to fail) and a policy allowing ``data/``."""
    make_project(root)
    (root / "data").mkdir()
    sha256 = hashlib.sha256((root / "tools" / "hello.wasm").read_bytes()).hexdigest()
    (root / "manifests" / "hello.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: hello}\ntools:\n"
        f"  hello: {{module: ../tools/hello.wasm, sha256: {sha256}}}\njobs:\n" + JOBS.format()
    )
    with open(root / POLICY, "a", encoding="utf-8") as policy:
        policy.write("fs:\n  roots: [./data]\n  write: [./data]\n")
    return root


def run_shard(project: Path, shard: str, out: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``sandrun run plan.json --shard SHARD`` under the project's policy, signed with the test key."""
    return sandrun(
        "run", "plan.json", "--policy", POLICY, "--shard", shard, "--out", out, "--signing-key", KEY, *extra,
        cwd=project,
    )  # fmt: skip
