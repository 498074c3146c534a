"""`check`, `compile` and `run` start no host program, whatever the repository holding the policy says.

Issue 9, item 3: recording the policy's git commit used to run ``git`` in the policy's folder, and a
repository's content (an embedded bare repository's ``core.fsmonitor``, filters, hooks) then ran
commands on the host. Two proofs: a guard that fails on any program start during in-process CLI
calls, and a hostile repository whose every hook and configured command would leave a marker.
"""

from __future__ import annotations

import _posixsubprocess
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_process import sandrun
from cli_project import make_project
from click.testing import CliRunner

from runner.cli import cli

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="building test repositories needs git")

_PROGRAM_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile")
_started: list[str] | None = None  # programs started while a guard is on; None: no guard


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _started is None or event not in _PROGRAM_EVENTS:
        return
    program = args[0]
    if event == "subprocess.Popen" and program is None:  # (executable, args, cwd, env)
        program = args[1] if isinstance(args[1], (str, bytes)) else args[1][0]
    if event != "os.system" and _own_interpreter(program):
        return  # Sandrun's own worker processes run this same interpreter, never a host program
    _started.append(f"{event}: {program!r}")
    raise RuntimeError(f"a program was started: {event} {program!r}")


def _own_interpreter(program: object) -> bool:
    try:
        return os.path.realpath(os.fsdecode(program)) == os.path.realpath(sys.executable)  # type: ignore[arg-type]
    except TypeError:
        return False


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one acts only while a guard is on


@pytest.fixture
def no_programs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record (and fail) every program started: audit events, plus the fork+exec that has none."""
    global _started
    started: list[str] = []
    fork_exec = _posixsubprocess.fork_exec

    def guarded_fork_exec(*args: Any) -> Any:
        executables = args[1] or [args[0][0]]
        if not all(_own_interpreter(e) for e in executables):
            started.append(f"fork_exec: {executables!r}")
            raise RuntimeError(f"a program was started: {executables!r}")
        return fork_exec(*args)

    monkeypatch.setattr(_posixsubprocess, "fork_exec", guarded_fork_exec)
    _started = started
    try:
        yield started
    finally:
        _started = None


def test_the_guard_sees_every_way_to_start_a_program(no_programs: list[str]) -> None:
    for start in (
        lambda: subprocess.run(["git", "--version"], capture_output=True, check=False),
        lambda: os.system("true"),
        lambda: os.posix_spawnp("true", ["true"], {}),
        lambda: os.execvp("true", ["true"]),
    ):
        with pytest.raises(RuntimeError):
            start()
    assert len(no_programs) == 4
    no_programs.clear()
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # our own interpreter is allowed
    assert no_programs == []


_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
}


def _git(cwd: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_CONFIG_GLOBAL": os.devnull, **_GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, env=env).stdout


def _hostile_config(marker: Path) -> str:
    touch = f"touch {marker}"
    return (
        "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tworktree = .\n"
        f'\tfsmonitor = "{touch}"\n\tpager = "{touch}"\n\tsshCommand = "{touch}"\n\teditor = "{touch}"\n'
        f'\thooksPath = hooks\n[filter "x"]\n\tclean = "{touch}"\n\tsmudge = "{touch}"\n'
        f'\tprocess = "{touch}"\n'
        f'[diff]\n\texternal = "{touch}"\n[credential]\n\thelper = "!{touch}"\n'
    )


def _hostile_hooks(gitdir: Path, marker: Path) -> None:
    hooks = gitdir / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in (
        "pre-commit",
        "post-checkout",
        "post-index-change",
        "reference-transaction",
        "fsmonitor-watchman",
    ):
        (hooks / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / name).chmod(0o755)


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path, str]:
    """(project, marker, outer HEAD): the policy inside an embedded bare repo inside a real repo.

    Both repositories' configs and hooks run ``touch marker``; the embedded one is a folder that git
    itself takes for a repository when run in it (checked here, so this fixture stays hostile).
    """
    marker = tmp_path / "pwned"
    project = make_project(tmp_path / "project", {"policies/embedded/policy.yaml": "64MiB"})
    source = tmp_path / "source"
    source.mkdir()
    _git(source, "init", "-q", "-b", "main")
    (source / "a").write_text("a\n")
    _git(source, "add", "a")
    _git(source, "commit", "-q", "-m", "a")
    embedded = project / "policies" / "embedded"
    shutil.copy(source / ".git" / "HEAD", embedded / "HEAD")
    for part in ("objects", "refs"):
        shutil.copytree(source / ".git" / part, embedded / part)
    (embedded / "config").write_text(_hostile_config(marker))
    _hostile_hooks(embedded, marker)
    (project / ".gitattributes").write_text("* filter=x diff=x\n")
    _git(project, "init", "-q", "-b", "main")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "project")
    head = _git(project, "rev-parse", "HEAD").strip()
    with (project / ".git" / "config").open("a") as config:  # now the outer repo is hostile too
        config.write(_hostile_config(marker).replace("\tbare = false\n\tworktree = .\n", ""))
    _hostile_hooks(project / ".git", marker)
    _git(embedded, "status", "--porcelain")
    assert marker.exists(), "git itself should run the embedded repository's fsmonitor"
    marker.unlink()
    return project, marker, head


def test_check_compile_and_run_start_no_program(
    hostile: tuple[Path, Path, str], no_programs: list[str], tmp_path: Path
) -> None:
    project, marker, head = hostile
    policy = str(project / "policies" / "embedded" / "policy.yaml")
    manifests = str(project / "manifests")
    root = ["--root", str(project)]
    plan = tmp_path / "plan.json"
    runner = CliRunner()
    for args in (
        ["check", manifests, "--policy", policy, *root],
        ["compile", manifests, "--policy", policy, *root, "-o", str(plan)],
        ["run", str(plan), "--policy", policy, *root, "--out", str(tmp_path / "out1")],
        ["run", manifests, "--policy", policy, *root, "--out", str(tmp_path / "out2")],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output, no_programs)
    assert no_programs == []
    assert not marker.exists()
    # the commit is still recorded: the outer repository's, never the embedded one's
    assert json.loads(plan.read_text())["policy"]["git_commit"] == head


def test_hostile_repository_runs_nothing_from_the_real_cli(
    hostile: tuple[Path, Path, str], tmp_path: Path
) -> None:
    project, marker, head = hostile
    policy = "policies/embedded/policy.yaml"
    for args in (
        ("check", "manifests", "--policy", policy),
        ("compile", "manifests", "--policy", policy, "-o", str(tmp_path / "plan.json")),
        ("run", str(tmp_path / "plan.json"), "--policy", policy, "--out", str(tmp_path / "out")),
    ):
        result = sandrun(*args, cwd=project)
        assert result.returncode == 0, result.stderr
    assert not marker.exists()
    record = json.loads((tmp_path / "plan.json").read_text())["policy"]
    assert record["git_commit"] == head and record["path"] == policy
