"""A small Sandrun project in a temporary folder: one manifest, its module, and named policies."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

HELLO = Path(__file__).resolve().parents[1] / "cases" / "_shared" / "hello.wasm"

POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {{name: {name}}}
signatures: {{required: false}}
limits:
  max: {{memory: {memory}}}
"""

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: hello}}
tools:
  hello: {{module: ../tools/hello.wasm, sha256: {sha256}}}
jobs:
  - {{name: greet, tool: hello, limits: {{memory: 32MiB}}}}
"""


def make_project(root: Path, policies: dict[str, str] | None = None) -> Path:
    """``root`` with ``manifests/hello.yaml`` (asks for 32 MiB), ``tools/hello.wasm`` and policies.

    ``policies`` maps a path (relative to ``root``) to the memory cap that policy allows; the
    default is one lenient policy, ``policies/lenient.yaml`` (64 MiB).
    """
    for folder in ("manifests", "tools", "policies"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HELLO, root / "tools" / "hello.wasm")
    sha256 = hashlib.sha256(HELLO.read_bytes()).hexdigest()
    (root / "manifests" / "hello.yaml").write_text(MANIFEST.format(sha256=sha256))
    for relative, memory in (policies or {"policies/lenient.yaml": "64MiB"}).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(POLICY.format(name=path.stem, memory=memory))
    return root
