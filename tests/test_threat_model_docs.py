"""docs/sandbox.md's threat model points at tests: every test it names must exist, so a renamed or
deleted test cannot leave a promise without its proof."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`((?:unit|cli|cases)/[\w./-]+?)(?:::(test_\w+))?`|`::(test_\w+)`")


def _threat_model() -> str:
    text = (REPO / "docs" / "sandbox.md").read_text(encoding="utf-8")
    start = text.index("## Threat model")
    return text[start : text.index("\n## ", start + 1)]


def test_every_test_the_threat_model_names_exists() -> None:
    section = _threat_model()
    missing: list[str] = []
    current: Path | None = None
    found = 0
    for match in REFERENCE.finditer(section):
        path, test, bare = match.groups()
        if path is not None:
            current = REPO / "tests" / path.rstrip("*")
            if "*" in path:
                if not list((REPO / "tests").glob(path)):
                    missing.append(path)
                continue
            if not current.exists():
                missing.append(path)
                continue
        name = test or bare
        if name is None:
            continue
        found += 1
        assert current is not None, f"{name} is named before any file"
        if not re.search(rf"^def {name}\(", current.read_text(encoding="utf-8"), re.M):
            missing.append(f"{current.relative_to(REPO)}::{name}")
    assert found >= 20
    assert not missing, missing
