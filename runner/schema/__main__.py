"""``python -m runner.schema``: regenerate the committed fast checks (``_fast_<kind>.py``) after a
schema or fastjsonschema change; ``tests/unit/test_schema_generated.py`` says when it is due."""

from __future__ import annotations

from pathlib import Path

from runner.schema import SCHEMA_KINDS, fast_check_code

if __name__ == "__main__":
    for kind in SCHEMA_KINDS:
        target = Path(__file__).with_name(f"_fast_{kind}.py")
        target.write_text(fast_check_code(kind), encoding="utf-8")
        print(f"wrote {target}")
