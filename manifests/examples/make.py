"""Regenerate docs-checks.yaml's digests and signatures after rebuilding the tools.

The example tools are signed with the committed, test-only key ``tests/keys/examples-2026.key``
(see tests/keys/README.md) so the examples also pass ``policies/ci-example.yaml``.
Run: ``python manifests/examples/make.py``
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from runner.signing import load_private_key, sign_module_digest

HERE = Path(__file__).resolve().parent
KEY = HERE.parents[1] / "tests" / "keys" / "examples-2026.key"
MANIFEST = HERE / "docs-checks.yaml"
TOOL = re.compile(r"(    module: \.\./tools/(?P<name>\w+)\.wasm\n    sha256: )\w+(\n(?:    .*\n)*?    signature: \{key: examples-2026, sig: )[^}]+\}")


def main() -> None:
    key = load_private_key(KEY)

    def fill(match: re.Match[str]) -> str:
        digest = hashlib.sha256((HERE.parent / "tools" / f"{match['name']}.wasm").read_bytes()).hexdigest()
        return f"{match[1]}{digest}{match[3]}{sign_module_digest(key, digest)}}}"

    MANIFEST.write_text(TOOL.sub(fill, MANIFEST.read_text()))


if __name__ == "__main__":
    main()
