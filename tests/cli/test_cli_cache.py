"""The disk cache through the CLI: a forged, self-consistent entry planted in the cache folder.

The attacker controls the cache folder's content (a CI cache restore, a shared runner) but not the
user's secret under ``$SANDRUN_CACHE_KEY``. They plant, under the name of the approved module's
entry, the compiled code of another module with a sidecar that is consistent in every field they
can compute. Before entries were authenticated this ran the attacker's code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cli_process import REPO, sandrun

from runner.cache import CACHE_FORMAT, _entry_mac
from runner.cache_secret import CacheSecret, load_secret

APPROVED = REPO / "manifests" / "tools" / "wordcount.wasm"  # counts words, exits 0
OTHER = REPO / "manifests" / "tools" / "fail.wasm"  # exits 3


def _entry_for(cache: Path, module: Path) -> tuple[Path, dict[str, object]]:
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    for sidecar in cache.glob("*.json"):
        meta = json.loads(sidecar.read_text())
        if str(meta["key"]).startswith(digest + "|"):
            return sidecar.with_suffix(".cwasm"), meta
    raise AssertionError(f"no cache entry for {module}")


def _exec(home: Path, module: Path, out: Path) -> tuple[int, str, list[str]]:
    env = {"XDG_CACHE_HOME": str(home / "cache"), "SANDRUN_CACHE_KEY": str(home / "state" / "cache.key")}
    result = sandrun(
        "exec",
        "--out",
        str(out),
        "--map-dir",
        "manifests/examples/docs::/d",
        str(module),
        "/d/guide.md",
        env=env,
    )
    records = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    sources = [r["data"]["source"] for r in records if r["kind"] == "tool.deployed"]
    return result.returncode, result.stdout, sources


def test_planted_consistent_entry_is_recompiled_and_the_approved_code_runs(tmp_path: Path) -> None:
    victim, attacker = tmp_path / "victim", tmp_path / "attacker"
    assert _exec(victim, APPROVED, tmp_path / "out1")[0] == 0
    assert _exec(victim, APPROVED, tmp_path / "out2")[2] == ["disk"]
    assert _exec(attacker, OTHER, tmp_path / "out3")[0] == 3
    victim_artifact, victim_meta = _entry_for(victim / "cache" / "sandrun" / "modules", APPROVED)
    other_artifact, _ = _entry_for(attacker / "cache" / "sandrun" / "modules", OTHER)

    # the forgery: the other module's code under the approved entry's name, every public field right
    code = other_artifact.read_bytes()
    forger = CacheSecret(load_secret(attacker / "state" / "cache.key").key, str(victim_meta["key_id"]))
    forged = {
        "format": CACHE_FORMAT,
        "key": victim_meta["key"],
        "key_id": victim_meta["key_id"],
        "size": len(code),
        "mac": _entry_mac(forger, str(victim_meta["key"]), len(code), [memoryview(code)]),
    }
    victim_artifact.write_bytes(code)
    victim_artifact.with_suffix(".json").write_text(json.dumps(forged))

    code_run, stdout, sources = _exec(victim, APPROVED, tmp_path / "out4")
    assert (code_run, sources) == (0, ["recompiled"])  # the other module would exit 3
    assert "/d/guide.md" in stdout
    assert victim_artifact.read_bytes() != code  # rewritten by the victim's runner
    assert _exec(victim, APPROVED, tmp_path / "out5")[2] == ["disk"]
