"""Folders Sandrun writes to, when someone else prepared them: ``--out`` committed by a repository as
a symlink or holding planted ``audit.*`` links and FIFOs, and the exec state folder swapped for a
link (docs/sandbox.md, threat model)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from cli_process import sandrun
from cli_project import HELLO, make_project

RUN = ("run", "manifests/hello.yaml", "--policy", "policies/lenient.yaml")


def _victim(tmp_path: Path) -> Path:
    """A folder outside the project holding what a run would replace: ``logs/`` and reports."""
    victim = tmp_path / "victim"
    (victim / "logs").mkdir(parents=True)
    (victim / "logs" / "important").write_text("keep me\n")
    (victim / "report.json").write_text("mine\n")
    return victim


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


def _env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state")}


def test_an_out_folder_committed_as_a_symlink_is_refused_and_nothing_where_it_points_changes(
    tmp_path: Path,
) -> None:
    project = make_project(tmp_path / "project")
    victim = _victim(tmp_path)
    before = _snapshot(victim)
    (project / "sandrun-out").symlink_to(victim)  # what `git checkout` of a hostile commit leaves
    ran = sandrun(*RUN, cwd=project, env=_env(tmp_path))
    assert ran.returncode == 2, ran.stderr
    assert "[out.unsafe]" in ran.stderr and "is a symlink" in ran.stderr
    assert _snapshot(victim) == before  # logs/ not replaced, report.json not overwritten


@pytest.mark.parametrize("planted", ["audit.jsonl", "audit.lock", "audit.jsonl.torn-20260101T000000Z"])
def test_audit_files_planted_as_links_or_fifos_are_refused_before_anything_is_written(
    tmp_path: Path, planted: str
) -> None:
    project = make_project(tmp_path / "project")
    out = project / "sandrun-out"
    out.mkdir()
    target = tmp_path / "victim" / "created-by-the-run"
    target.parent.mkdir()
    (out / planted).symlink_to(target)  # dangling: O_CREAT through it would create the target
    ran = sandrun(*RUN, cwd=project, env=_env(tmp_path))
    assert ran.returncode == 2 and f"holds {planted}" in ran.stderr, ran.stderr
    assert not target.exists()
    (out / planted).unlink()
    os.mkfifo(out / planted)  # opening it to append would block the run forever
    ran = sandrun(*RUN, cwd=project, env=_env(tmp_path))
    assert ran.returncode == 2 and "[out.unsafe]" in ran.stderr, ran.stderr
    assert sorted(p.name for p in out.iterdir()) == [planted]


@pytest.mark.parametrize("planted", ["report.json/", "summary.md/", "logs"])
def test_a_report_planted_as_a_folder_or_logs_as_a_file_is_refused_before_the_log_opens(
    tmp_path: Path, planted: str
) -> None:
    """Each would fail every run at its end (a report cannot replace a folder, nor ``logs/`` be
    retired when it is a file), leaving its log unsealed: refused up front, nothing written."""
    project = make_project(tmp_path / "project")
    out = project / "sandrun-out"
    out.mkdir()
    if planted.endswith("/"):
        (out / planted.rstrip("/")).mkdir()
    else:
        (out / planted).write_text("not a folder\n")
    ran = sandrun(*RUN, cwd=project, env=_env(tmp_path))
    assert ran.returncode == 2 and f"holds {planted.rstrip('/')}" in ran.stderr, ran.stderr
    assert sorted(p.name for p in out.iterdir()) == [planted.rstrip("/")]


def test_an_out_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o777)  # anyone could swap audit.jsonl for a link between the check and the open
    ran = sandrun(*RUN, "--out", str(out), cwd=project, env=_env(tmp_path))
    assert ran.returncode == 2 and "writable by others" in ran.stderr, ran.stderr
    assert list(out.iterdir()) == []
    out.chmod(0o755)
    ran = sandrun(*RUN, "--out", str(out), cwd=project, env=_env(tmp_path))
    assert ran.returncode == 0, ran.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user's needs root")
def test_an_out_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    out = tmp_path / "theirs"
    out.mkdir()
    os.chown(out, 65534, 65534)
    ran = sandrun(*RUN, "--out", str(out), cwd=project, env=_env(tmp_path))
    assert ran.returncode == 2 and "owned by another user" in ran.stderr, ran.stderr


def test_an_exec_state_folder_swapped_for_a_link_deletes_nothing_where_it_points(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    for index in range(40):  # more than the 32 run folders exec keeps: the clean-up would delete 8
        (precious / f"project{index:02}").mkdir(parents=True)
        (precious / f"project{index:02}" / "file").write_text("data\n")
    before = _snapshot(precious)
    state = tmp_path / "state" / "sandrun"
    state.mkdir(parents=True)
    (state / "exec").symlink_to(precious)
    ran = sandrun("exec", str(HELLO), cwd=tmp_path, env=_env(tmp_path))
    assert ran.returncode == 2 and "[out.unsafe]" in ran.stderr and "is a symlink" in ran.stderr, ran.stderr
    assert _snapshot(precious) == before
    (state / "exec").unlink()
    (state / "exec").mkdir(mode=0o770)
    (state / "exec").chmod(0o770)  # a group member could plant links for the clean-up to follow
    ran = sandrun("exec", str(HELLO), cwd=tmp_path, env=_env(tmp_path))
    assert ran.returncode == 2 and "writable by group or others" in ran.stderr, ran.stderr
    (state / "exec").chmod(0o700)
    state.chmod(0o777)  # whoever may write the folder above could swap exec for a link later
    ran = sandrun("exec", str(HELLO), cwd=tmp_path, env=_env(tmp_path))
    assert ran.returncode == 2 and f"{state}: [out.unsafe]" in ran.stderr, ran.stderr
    state.chmod(0o700)
    assert sandrun("exec", str(HELLO), cwd=tmp_path, env=_env(tmp_path)).returncode == 0


def test_the_state_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Made with ``mkdir(parents=True)`` under umask 002, ``sandrun/`` was group-writable: the
    cache key's folder check then switched the disk cache off."""
    from runner.api import exec_out_dir

    previous = os.umask(0o002)
    try:
        exec_out_dir({"XDG_STATE_HOME": str(tmp_path / "state")})
    finally:
        os.umask(previous)
    for folder in (tmp_path / "state" / "sandrun", tmp_path / "state" / "sandrun" / "exec"):
        assert folder.stat().st_mode & 0o077 == 0


def test_the_exec_clean_up_never_follows_a_link_among_its_run_folders(tmp_path: Path) -> None:
    from runner.api import EXEC_RUNS_KEPT, exec_out_dir

    base = tmp_path / "state" / "sandrun" / "exec"
    base.mkdir(parents=True, mode=0o700)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "file").write_text("data\n")
    (base / "00000000T000000-link").symlink_to(precious)  # sorts oldest: first in line for deletion
    for _ in range(EXEC_RUNS_KEPT + 2):
        exec_out_dir({"XDG_STATE_HOME": str(tmp_path / "state")})
    assert (precious / "file").read_text() == "data\n"
    assert len([p for p in base.iterdir() if not p.is_symlink()]) == EXEC_RUNS_KEPT


_READ_POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: ci}
signatures: {required: false}
fs: {roots: [.], write: false}
"""
_PROBE_MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: {name}}}
tools:
  probe: {{module: probe.wasm, sha256: {sha256}}}
jobs:
  - {{name: job, tool: probe, args: [{args}], fs: [{{host: {host}, guest: /o, mode: {mode}}}]}}
"""


@pytest.mark.parametrize("secret", ["cache", "signing"])
def test_no_mount_may_hold_the_runners_keys_not_even_read_only(tmp_path: Path, secret: str) -> None:
    """CI writes a key from its secrets into the workspace (the cache key docs/sandbox.md suggests
    sharing, or the seal's signing key): a manifest author mounting the workspace read-only would
    print it, then forge cache entries (native code in trusted runs) or seals."""
    import hashlib

    from cli_process import REPO

    project = tmp_path / "project"
    (project / "keys").mkdir(parents=True)
    probe = REPO / "tests" / "fixtures" / "probe.wasm"
    shutil.copy(probe, project / "probe.wasm")
    (project / "policy.yaml").write_text(_READ_POLICY)
    env = _env(tmp_path)
    flags: tuple[str, ...] = ()
    if secret == "cache":
        name = "cache.key"
        (project / "keys" / name).write_text(os.urandom(32).hex() + "\n")
        (project / "keys" / name).chmod(0o600)
        env["SANDRUN_CACHE_KEY"] = str(project / "keys" / name)
    else:
        name = "runner.key"
        assert sandrun("keys", "generate", "--id", "runner", "--out", str(project / "keys")).returncode == 0
        flags = ("--signing-key", "keys/runner.key")
    digest = hashlib.sha256(probe.read_bytes()).hexdigest()
    args = f"read, /o/keys/{name}"
    (project / "m.yaml").write_text(
        _PROBE_MANIFEST.format(name="steal", sha256=digest, args=args, host=".", mode="ro")
    )
    ran = sandrun("run", "m.yaml", "--policy", "policy.yaml", *flags, cwd=project, env=env)
    assert ran.returncode == 1, ran.stderr
    assert "[mount.protected]" in ran.stderr and name in ran.stderr
    assert not (project / "sandrun-out" / "logs" / "steal").exists()  # the guest never ran
    secret_text = (project / "keys" / name).read_text()
    assert all(secret_text not in p.read_text() for p in (project / "sandrun-out").rglob("*") if p.is_file())


_WRITE_POLICY = _READ_POLICY.replace("write: false", "write: true")


@contextmanager
def _bind_mounts(*pairs: tuple[Path, Path]) -> Iterator[None]:
    """Bind mounts (``source``, ``target``) for the block; skips where none can be made."""
    made: list[Path] = []
    try:
        for source, target in pairs:
            target.mkdir(parents=True, exist_ok=True)
            command = ["mount", "--bind", str(source), str(target)]
            done = subprocess.run(command, capture_output=True, check=False)
            if done.returncode != 0:
                pytest.skip(f"bind mounts need privileges here: {done.stderr.decode().strip()}")
            made.append(target)
        yield
    finally:
        for target in reversed(made):
            subprocess.run(["umount", str(target)], check=True)


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
@pytest.mark.parametrize("layout", ["alias-in-root", "container-volumes"])
def test_a_rw_mount_reaching_the_out_folder_through_a_bind_mount_is_denied(
    tmp_path: Path, layout: str
) -> None:
    """The same folder under two names, as container volumes make it: ``alias-in-root`` binds
    ``--out`` into the root; ``container-volumes`` is ``-v work:/w -v work/sandrun-out:/out`` with
    ``--out /out`` and a rw mount of ``/w``. Compared as text, neither path holds the other."""
    import hashlib

    from cli_process import REPO

    host = tmp_path / "host"
    work = host / "work"
    (work / "sandrun-out").mkdir(parents=True)
    probe = REPO / "tests" / "fixtures" / "probe.wasm"
    shutil.copy(probe, work / "probe.wasm")
    (work / "policy.yaml").write_text(_WRITE_POLICY)
    digest = hashlib.sha256(probe.read_bytes()).hexdigest()
    if layout == "alias-in-root":
        binds = [(work / "sandrun-out", work / "alias")]
        mounted, file = "alias", "audit.jsonl"
        project, out = work, work / "sandrun-out"
    else:
        binds = [(work, tmp_path / "w"), (work / "sandrun-out", tmp_path / "out")]
        mounted, file = ".", "sandrun-out/audit.jsonl"
        project, out = tmp_path / "w", tmp_path / "out"
    args = f"write, /o/{file}, forged"
    (work / "m.yaml").write_text(
        _PROBE_MANIFEST.format(name="tamper", sha256=digest, args=args, host=mounted, mode="rw")
    )
    with _bind_mounts(*binds):
        flags = ("--policy", "policy.yaml", "--out", str(out))
        ran = sandrun("run", "m.yaml", *flags, cwd=project, env=_env(tmp_path))
        assert ran.returncode == 1, ran.stderr
        assert "[mount.protected]" in ran.stderr
        verified = sandrun("audit", "verify", str(out))
        assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout + verified.stderr


def test_a_rw_mount_holding_the_policy_is_denied(tmp_path: Path) -> None:
    """A job granted ``rw`` on the whole workspace would rewrite the policy the next run on this
    checkout compiles under (loosening every limit for the jobs after it)."""
    import hashlib

    from cli_process import REPO

    project = tmp_path / "project"
    (project / "policies").mkdir(parents=True)
    probe = REPO / "tests" / "fixtures" / "probe.wasm"
    shutil.copy(probe, project / "probe.wasm")
    policy = project / "policies" / "ci.yaml"
    policy.write_text(_READ_POLICY.replace("write: false", "write: true"))
    before = policy.read_bytes()
    digest = hashlib.sha256(probe.read_bytes()).hexdigest()
    args = "write, /o/policies/ci.yaml, 'limits: {max: {memory: 4GiB}}'"
    manifest = _PROBE_MANIFEST.format(name="loosen", sha256=digest, args=args, host=".", mode="rw")
    (project / "m.yaml").write_text(manifest)
    flags = ("--policy", "policies/ci.yaml", "--out", str(tmp_path / "out"))  # not in the workspace
    ran = sandrun("run", "m.yaml", *flags, cwd=project, env=_env(tmp_path))
    assert ran.returncode == 1 and "[mount.protected]" in ran.stderr and "ci.yaml" in ran.stderr, ran.stderr
    assert policy.read_bytes() == before
    (project / "sub").mkdir()  # a rw mount beside the policy is fine
    manifest = _PROBE_MANIFEST.format(name="beside", sha256=digest, args="creat, /o/x", host="sub", mode="rw")
    (project / "m.yaml").write_text(manifest)
    ran = sandrun("run", "m.yaml", *flags, cwd=project, env=_env(tmp_path))
    assert ran.returncode == 0, ran.stderr


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_plan_or_policy_committed_as_a_link_to_a_device_or_fifo_is_refused_unread(
    tmp_path: Path, target: str
) -> None:
    """A plan is a lock file kept in git: committed as a link to ``/dev/zero`` it filled memory
    (internal error, the log left unsealed), to a FIFO or ``/dev/stdin`` it blocked the run
    forever; a policy link to a FIFO blocked ``check``."""
    project = make_project(tmp_path / "project")
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        target = str(tmp_path / "fifo")
    (project / "plan.json").symlink_to(target)
    env = _env(tmp_path)
    bounded = partial(sandrun, cwd=project, env=env, timeout=60, address_space=2 << 30)  # hang, endless read
    ran = bounded("run", "plan.json", "--policy", "policies/lenient.yaml")
    assert ran.returncode == 2 and "not a regular file" in ran.stderr, ran.stderr
    verified = sandrun("audit", "verify", str(project / "sandrun-out"))
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stderr
    (project / "policies" / "linked.yaml").symlink_to(target)
    checked = bounded("check", "manifests", "--policy", "policies/linked.yaml")
    assert checked.returncode == 2 and "[yaml.read]" in checked.stderr, checked.stderr
