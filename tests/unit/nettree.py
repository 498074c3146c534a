"""Write a policy and a manifest that run the ``httpget`` C guest, for compiler and end-to-end tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

HTTPGET = Path(__file__).resolve().parents[1] / "fixtures" / "httpget.wasm"


def write_tree(
    root: Path,
    *,
    policy_network: dict[str, Any],
    jobs: list[dict[str, Any]],
    wasm: bytes | None = None,
) -> tuple[Path, Path]:
    """``root/policy.yaml`` and ``root/manifest.yaml`` (JSON is YAML) for ``jobs`` of the guest
    (``wasm``, by default the ``httpget`` C guest)."""
    root.mkdir(parents=True, exist_ok=True)
    guest = HTTPGET.read_bytes() if wasm is None else wasm
    (root / "httpget.wasm").write_bytes(guest)
    digest = hashlib.sha256(guest).hexdigest()
    policy = {
        "apiVersion": "sandrun/v1",
        "kind": "Policy",
        "metadata": {"name": "net"},
        "signatures": {"required": False},
        "limits": {
            "default": {"memory": "32MiB", "timeout": "20s", "stack": "512KiB", "output": "1MiB"},
            "max": {"memory": "64MiB", "timeout": "1m", "stack": "1MiB", "output": "4MiB"},
        },
        "network": policy_network,
    }
    manifest = {
        "apiVersion": "sandrun/v1",
        "kind": "Manifest",
        "metadata": {"name": "net"},
        "tools": {"httpget": {"module": "./httpget.wasm", "sha256": digest}},
        "jobs": [{"tool": "httpget", **job} for job in jobs],
    }
    (root / "policy.yaml").write_text(json.dumps(policy, indent=1))
    (root / "manifest.yaml").write_text(json.dumps(manifest, indent=1))
    return root / "manifest.yaml", root / "policy.yaml"
