"""Benchmark: `sandrun check` over 500 generated manifests.

Prints the time per manifest, the share of it spent in schema validation and in YAML loading, and
ratios: against the 2 ms/manifest target, and against a baseline measured in the same run (PyYAML's
plain ``CSafeLoader``/``SafeLoader`` reading the same files, the cheapest possible parse), so the
figures compare rather than time on a noisy machine.

Run: ``python bench/bench_check.py [--manifests 500] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import wasmtime
import yaml

import runner.api as api
import runner.schema as schema

TARGET_MS = 2.0

POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: bench}
limits:
  default: {fuel: 1000000, memory: 16MiB, timeout: 5s, stack: 512KiB, output: 64KiB}
  max: {fuel: 1000000000, memory: 128MiB, timeout: 1m, stack: 1MiB, output: 1MiB}
fs: {roots: [./data], write: [./out]}
network: {allow: ["https://*.example.org"], block: [private]}
actions: {allow: ["tool.fs.*"], deny: ["tool.fs.delete"]}
governance: {max_score: 1.5}
"""

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata:
  name: bench-{i}
  description: generated manifest number {i}
tools:
  hello:
    module: ../tool.wasm
    sha256: {digest}
    version: 1.{i}.0
    actions: [tool.fs.read]
jobs:
  - name: lint
    tool: hello
    args: [--strict, /src/input.txt, "--index={i}"]
    env: {{LANG: C, INDEX: "{i}"}}
    fs:
      - {{host: ../data, guest: /src, mode: ro}}
      - {{host: ../out, guest: /out, mode: rw}}
    network:
      allow: ["https://api.example.org"]
    limits: {{fuel: 500000, memory: 32MiB, timeout: 2s, stack: 256KiB, output: 32KiB}}
  - name: report
    tool: hello
    needs: [lint]
    args: [report]
    expect: {{exit_code: 0}}
"""


def _make_tree(base: Path, count: int) -> Path:
    module = wasmtime.wat2wasm('(module (func (export "_start")))')
    (base / "tool.wasm").write_bytes(module)
    digest = hashlib.sha256(module).hexdigest()
    for folder in ("data", "out", "manifests"):
        (base / folder).mkdir()
    (base / "policy.yaml").write_text(POLICY)
    for i in range(count):
        (base / "manifests" / f"m{i:04}.yaml").write_text(MANIFEST.format(i=i, digest=digest))
    return base


class _Timed:
    """Wraps a module function to add up the time spent inside it."""

    def __init__(self, module: object, name: str) -> None:
        self.module, self.name = module, name
        self.original = getattr(module, name)
        self.total = 0.0

    def __enter__(self) -> _Timed:
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        setattr(self.module, self.name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.module, self.name, self.original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = _make_tree(Path(tmp), args.manifests)
        paths = [base / "manifests"]
        api.compile_manifests(paths, base / "policy.yaml", root=base)  # warm: imports, compiled validators
        checks, schema_shares, yaml_shares, baselines = [], [], [], []
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        files = sorted((base / "manifests").iterdir())
        for _ in range(args.rounds):
            with _Timed(schema, "validate") as in_schema, _Timed(api, "load_yaml_file") as in_yaml:
                start = time.perf_counter()
                plan = api.compile_manifests(paths, base / "policy.yaml", root=base)
                elapsed = time.perf_counter() - start
            assert len(plan.jobs) == 2 * args.manifests
            checks.append(elapsed)
            schema_shares.append(in_schema.total / elapsed)
            yaml_shares.append(in_yaml.total / elapsed)
            start = time.perf_counter()
            for path in files:
                yaml.load(path.read_bytes(), Loader=loader)  # noqa: S506 - a safe loader, the baseline
            baselines.append(time.perf_counter() - start)
    per_manifest_ms = statistics.median(checks) / args.manifests * 1000
    baseline_ms = statistics.median(baselines) / args.manifests * 1000
    print(f"sandrun check: {args.manifests} manifests x {args.rounds} rounds (median)")
    verdict = "OK" if per_manifest_ms < TARGET_MS else "OVER"
    print(
        f"  time per manifest          {per_manifest_ms:8.3f} ms   target {TARGET_MS} ms  "
        f"-> {per_manifest_ms / TARGET_MS:5.2f}x of target ({verdict})"
    )
    print(f"  share in schema validation {statistics.median(schema_shares) * 100:8.1f} %")
    print(f"  share in strict YAML load  {statistics.median(yaml_shares) * 100:8.1f} %")
    print(
        f"  baseline: bare PyYAML {loader.__name__} {baseline_ms:8.3f} ms/manifest -> check is "
        f"{per_manifest_ms / baseline_ms:5.2f}x the bare parse"
    )


if __name__ == "__main__":
    main()
