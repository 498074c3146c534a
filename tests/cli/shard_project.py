"""A project with jobs worth sharding: a ``needs`` chain, a writer and a reader of one folder, loners."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cli_project import make_project

POLICY = "policies/lenient.yaml"

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
