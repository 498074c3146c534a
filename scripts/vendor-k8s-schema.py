"""Vendor the Kubernetes JSON Schemas that validate ci/k8s/*.yaml (Job, PersistentVolumeClaim).

The schemas come from the PyPI package kubernetes-validate (pinned below), which ships the
Kubernetes OpenAPI definitions as JSON Schema per Kubernetes version. Each kind is written as one
self-contained file holding only the definitions it reaches, so CI validates with check-jsonschema
and the tests with jsonschema, with no download. Run again to move to another Kubernetes version:

    python scripts/vendor-k8s-schema.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

PACKAGE = "kubernetes-validate==1.37.0"
KUBERNETES = "v1.33.0"  # Job's backoffLimitPerIndex and podFailurePolicy are GA from here
KINDS = ("job-batch-v1.json", "persistentvolumeclaim-v1.json")
OUT = Path(__file__).resolve().parents[1] / "ci" / "k8s" / "schema"
PREFIX = "/api/_definitions.json#/$defs/"
LOCAL = "#/$defs/"


def name_of(ref: Any) -> str | None:
    """The definition a ``$ref`` names: the kind files say /api/_definitions.json#/$defs/X, the
    definitions themselves #/$defs/X."""
    for prefix in (PREFIX, LOCAL):
        if isinstance(ref, str) and ref.startswith(prefix):
            return ref[len(prefix) :]
    return None


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        name = name_of(node.get("$ref"))
        found = {name} if name else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def local(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (LOCAL + (name_of(v) or "") if k == "$ref" and name_of(v) else local(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [local(v) for v in node]
    return node


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", scratch, PACKAGE],
            check=True,
        )
        (wheel,) = Path(scratch).glob("*.whl")
        base = f"kubernetes_validate/kubernetes-json-schema/{KUBERNETES}-local-strict/"
        with zipfile.ZipFile(wheel) as archive:
            definitions = json.loads(archive.read(base + "_definitions.json"))["$defs"]
            for source in KINDS:
                schema = json.loads(archive.read(base + source))
                needed: set[str] = set()
                todo = refs(schema)
                while todo:
                    name = todo.pop()
                    if name not in needed:
                        needed.add(name)
                        todo |= refs(definitions[name])
                schema = local(schema)
                schema["$defs"] = {name: local(definitions[name]) for name in sorted(needed)}
                schema["$comment"] = (
                    f"Kubernetes {KUBERNETES} ({source}, strict), from {PACKAGE}; "
                    "scripts/vendor-k8s-schema.py"
                )
                (OUT / source).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
                print(f"{source}: {len(needed)} definitions")


if __name__ == "__main__":
    main()
