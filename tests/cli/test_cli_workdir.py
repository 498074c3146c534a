"""A job's working directory: ``sandrun exec --work-dir`` and the manifest's ``work_dir`` (issue 10).

The fixture (tests/fixtures/src/workdir.c, built by zig's wasi-libc) prints ``getcwd()`` and reads
each path it is given; probe.wasm writes. Relative paths must resolve in the work dir, ``..`` must
not leave it, and a work dir outside every mount is refused when the manifest is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from cli_process import REPO, sandrun

FIXTURES = REPO / "tests" / "fixtures"
WORKDIR = FIXTURES / "workdir.wasm"
PROBE = FIXTURES / "probe.wasm"

POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: workdir}
fs: {roots: [.], write: [./data/proj]}
"""

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: wd}}
tools:
  probe: {{module: probe.wasm, sha256: {sha256}}}
jobs:
  - name: write
    tool: probe
    args: [creat, made.txt]
    fs:
      - {{host: data, guest: /data}}
      - {{host: data/proj, guest: /proj, mode: rw}}
    work_dir: {work_dir}
"""


def _tree(tmp_path: Path) -> Path:
    """``project/`` with ``top.txt``, ``proj/a.txt``, ``proj/sub/b.txt`` and a file outside."""
    project = tmp_path / "project"
    (project / "proj" / "sub").mkdir(parents=True)
    (project / "top.txt").write_text("top\n")
    (project / "proj" / "a.txt").write_text("in proj\n")
    (project / "proj" / "sub" / "b.txt").write_text("in sub\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    return project


def _exec(project: Path, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    ran = sandrun("exec", *args, cwd=project, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    return ran.returncode, ran.stdout, ran.stderr


def test_relative_paths_resolve_in_the_work_dir(tmp_path: Path) -> None:
    project = _tree(tmp_path)
    paths = ["a.txt", "sub/b.txt", "./a.txt", "/data/top.txt"]
    code, out, err = _exec(
        project, tmp_path, "--dir", ".::/data", "--work-dir", "/data/proj", str(WORKDIR), *paths
    )
    assert code == 0, err
    assert out.splitlines() == [
        "cwd /",  # wasi-libc's own cwd: the host cannot set it (docs/exec.md)
        "a.txt ok: in proj",
        "sub/b.txt ok: in sub",
        "./a.txt ok: in proj",
        "/data/top.txt ok: top",  # absolute paths still reach the mount
    ]
    without = _exec(project, tmp_path, "--dir", ".::/data", str(WORKDIR), "a.txt")
    assert without[0] == 1 and "a.txt denied" in without[1]  # the work dir is what made it resolve


def test_dot_dot_cannot_leave_the_work_dir_or_the_mount(tmp_path: Path) -> None:
    project = _tree(tmp_path)
    escapes = ["../top.txt", "sub/../../top.txt", "../../secret.txt", "../../../../../../etc/passwd"]
    code, out, _ = _exec(
        project, tmp_path, "--dir", "proj::/data", "--work-dir", "/data/sub", str(WORKDIR), "b.txt", *escapes
    )
    lines = out.splitlines()
    assert code == 1
    assert lines[1] == "b.txt ok: in sub"
    for path, line in zip(escapes, lines[2:], strict=True):
        assert line.startswith(f"{path} denied errno="), line
    assert "outside" not in out and "root:" not in out and "top" not in out.replace("top.txt", "")


def test_a_work_dir_outside_every_mount_is_refused(tmp_path: Path) -> None:
    project = _tree(tmp_path)
    for work_dir in ("/elsewhere", "/data/../etc", "/dat", "/data/./proj"):
        code, _, err = _exec(project, tmp_path, "--dir", ".::/data", "--work-dir", work_dir, str(WORKDIR))
        assert code == 2, (work_dir, err)
        assert "/jobs/0/work_dir [fs.work-dir-outside-mounts]" in err, err
    code, _, err = _exec(project, tmp_path, "--work-dir", "/", str(WORKDIR))  # no mount at all
    assert code == 2 and "[fs.work-dir-outside-mounts]" in err


def test_a_work_dir_that_is_missing_a_file_or_a_symlink_is_refused(tmp_path: Path) -> None:
    project = _tree(tmp_path)
    os.symlink(tmp_path, project / "proj" / "out")  # a link inside the mount, leading out of it
    for work_dir in ("/data/nope", "/data/a.txt", "/data/out"):
        code, out, err = _exec(
            project, tmp_path, "--dir", "proj::/data", "--work-dir", work_dir, str(WORKDIR)
        )
        assert code == 2 and "[fs.work-dir-missing]" in err, (work_dir, err)
        assert out == ""


def test_a_work_dir_next_to_a_root_mount_is_refused_unless_it_is_the_root(tmp_path: Path) -> None:
    project = _tree(tmp_path)
    code, _, err = _exec(project, tmp_path, "--dir", ".", "--work-dir", "/proj", str(WORKDIR), "a.txt")
    assert code == 2 and "[fs.work-dir-root-mount]" in err, err
    code, out, err = _exec(project, tmp_path, "--dir", ".", "--work-dir", "/", str(WORKDIR), "top.txt")
    assert code == 0 and "top.txt ok: top" in out, err


def _run_project(tmp_path: Path, work_dir: str) -> Path:
    project = _tree(tmp_path)
    shutil.move(project / "proj", project / "data")
    (project / "data" / "proj").mkdir()
    shutil.copy(PROBE, project / "probe.wasm")
    sha256 = hashlib.sha256(PROBE.read_bytes()).hexdigest()
    (project / "wd.yaml").write_text(MANIFEST.format(sha256=sha256, work_dir=work_dir))
    (project / "policy.yaml").write_text(POLICY)
    return project


def test_the_manifest_work_dir_is_checked_planned_logged_and_keeps_the_mount_mode(tmp_path: Path) -> None:
    project = _run_project(tmp_path, "/proj")
    ran = sandrun("run", "wd.yaml", "--policy", "policy.yaml", "--out", "out", cwd=project)
    assert ran.returncode == 0, ran.stderr
    assert (project / "data" / "proj" / "made.txt").read_text() == "new"
    records = [json.loads(line) for line in (project / "out" / "audit.jsonl").read_text().splitlines()]
    started = [r["data"] for r in records if r["kind"] == "job.started"]
    assert [s["work_dir"] for s in started] == ["/proj"]
    planned = sandrun("compile", "wd.yaml", "--policy", "policy.yaml", "-o", "-", cwd=project)
    assert json.loads(planned.stdout)["jobs"][0]["work_dir"] == "/proj"

    read_only = _run_project(tmp_path / "ro", "/data")  # the same folder's parent, mounted ro
    ran = sandrun("run", "wd.yaml", "--policy", "policy.yaml", "--out", "out", cwd=read_only)
    assert ran.returncode == 1  # the write is refused: the work dir has its mount's mode
    assert not (read_only / "data" / "made.txt").exists()
    assert (read_only / "out" / "logs" / "wd" / "write.stdout").read_text().startswith("creat denied")


def test_check_names_the_line_of_a_bad_work_dir(tmp_path: Path) -> None:
    project = _run_project(tmp_path, "/nowhere")
    checked = sandrun("check", "wd.yaml", "--policy", "policy.yaml", cwd=project)
    assert checked.returncode == 2
    assert checked.stderr.startswith("wd.yaml:13:15: /jobs/0/work_dir [fs.work-dir-outside-mounts]"), (
        checked.stderr
    )
