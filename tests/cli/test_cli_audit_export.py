"""`sandrun audit export --tiles`: a real, signed log exported as C2SP tlog-tiles and read back by
the independent reader of tests/unit/test_audit_tiles.py (root from the tiles, signature with
`cryptography`), re-exported after another run, and refused for a log that does not verify."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

from test_cli_attest import ran  # noqa: F401  (the module-scoped fixture: a signed run)
from test_cli_audit_prove import _invoke, _two_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_audit_tiles import read_tiles  # noqa: E402


def _pub(project: Path) -> bytes:
    return base64.b64decode((project / "keys" / "runner.pub").read_text())


def test_export_reads_back_and_re_export_after_a_run_only_adds(ran: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "first"
    shutil.copytree(ran / "out", out)
    tiles = tmp_path / "tiles"
    code, _, err = _invoke(
        "audit", "export", str(out), "--tiles", str(tiles), "--pub", str(ran / "keys" / "runner.pub")
    )
    assert code == 0, err
    lines = (out / "audit.jsonl").read_bytes().splitlines()
    size, _, entries = read_tiles(tiles, _pub(ran))
    assert (size, entries) == (len(lines) - 1, lines[:-1])  # every record the last seal covers
    assert (tiles / "checkpoint").read_text() == json.loads(lines[-1])["data"]["checkpoint"]
    before = {p: p.read_bytes() for p in tiles.rglob("*") if p.is_file() and p.name != "checkpoint"}

    longer, _ = _two_runs(ran, tmp_path)
    code, said, err = _invoke("audit", "export", str(longer), "--tiles", str(tiles))
    assert code == 0 and "already there" in said + err, err
    size, _, entries = read_tiles(tiles, _pub(ran), exact=False)
    lines = (longer / "audit.jsonl").read_bytes().splitlines()
    assert (size, entries) == (len(lines) - 1, lines[:-1])
    assert all(p.read_bytes() == data for p, data in before.items())


def test_an_unverifiable_log_is_not_exported(ran: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    shutil.copytree(ran / "out", out)
    log = out / "audit.jsonl"
    log.write_text(log.read_text().replace('"status":"passed"', '"status":"failed"', 1))
    code, stdout, err = _invoke("audit", "export", str(out), "--tiles", str(tmp_path / "tiles"))
    assert code == 4 and "[audit.edited]" in err and not (tmp_path / "tiles").exists()
    code, _, err = _invoke(
        "audit",
        "export",
        str(ran / "out"),
        "--tiles",
        str(tmp_path / "tiles"),
        "--pub",
        str(tmp_path / "nope"),
    )
    assert code == 2 and not (tmp_path / "tiles").exists()


def test_a_folder_in_the_way_or_of_another_log_is_refused(ran: Path, tmp_path: Path) -> None:  # noqa: F811
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "index.html").write_text("mine")
    code, _, err = _invoke("audit", "export", str(ran / "out"), "--tiles", str(busy))
    assert code == 2 and "[input.tiles-dir]" in err and (busy / "index.html").read_text() == "mine"
    other = tmp_path / "other"  # another log's export (a log started afresh) is not overwritten
    code, _, _ = _invoke(
        "run", str(ran / "manifests"), "--policy", str(ran / "policy.yaml"), "--root", str(ran),
        "--out", str(other), "--signing-key", str(ran / "keys" / "runner.key"),
    )  # fmt: skip
    assert code == 0
    tiles = tmp_path / "tiles"
    assert _invoke("audit", "export", str(other), "--tiles", str(tiles))[0] == 0
    snapshot = (tiles / "checkpoint").read_bytes()
    code, _, err = _invoke("audit", "export", str(ran / "out"), "--tiles", str(tiles))
    assert code == 4 and "[audit.tiles-mismatch]" in err and (tiles / "checkpoint").read_bytes() == snapshot


def test_an_old_log_proves_against_its_computed_root_but_exports_only_once_resealed(
    ran: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from test_audit_verify import _legacy

    out = tmp_path / "out"
    shutil.copytree(ran / "out", out)
    log = out / "audit.jsonl"
    lines = log.read_bytes().split(b"\n")[:-1]
    log.write_bytes(b"".join(line + b"\n" for line in _legacy(lines, 1)))
    code, stdout, err = _invoke("audit", "prove", str(out), "--record", "0")
    assert code == 0, err
    assert json.loads(stdout)["tree_size"] == len(lines) - 1
    code, _, err = _invoke("audit", "export", str(out), "--tiles", str(tmp_path / "tiles"))
    assert code == 4 and "[audit.legacy-checkpoint]" in err and not (tmp_path / "tiles").exists()
