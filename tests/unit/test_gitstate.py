"""The policy's git commit, read from the repository's files: checked against real ``git`` output.

``git`` runs here only to *build* repositories (loose, packed with deltas, worktrees, SHA-256); the
reader under test never starts a program (tests/cli/test_cli_no_exec.py proves that end to end).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runner.policy.gitstate as gitstate
from runner.policy.gitstate import GitState, git_state, policy_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="building test repositories needs git")

_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"], "HOME": str(cwd), **_ENV},
    )
    return result.stdout.strip()


def make_repo(path: Path, *extra: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main", *extra)
    return path


def commit_all(repo: Path, message: str = "c") -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo")
    (repo / "policies").mkdir()
    (repo / "policies" / "ci.yaml").write_text("name: ci\n")
    commit_all(repo)
    return repo


def state(path: Path) -> GitState | None:
    return git_state(path.resolve())


def test_no_repository_records_nothing(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("x: 1\n")
    assert policy_commit(tmp_path / "p.yaml") is None


def test_loose_repository_matches_git_and_tracks_dirtiness(repo: Path) -> None:
    policy = repo / "policies" / "ci.yaml"
    head = git(repo, "rev-parse", "HEAD")
    assert state(policy) == GitState(head, dirty=False)
    assert policy_commit(policy) == head
    policy.write_text("name: changed\n")
    assert state(policy) == GitState(head, dirty=True)
    assert policy_commit(policy) == head + "+dirty"
    git(repo, "add", "-A")  # staged but not committed: still not what HEAD holds
    assert state(policy) == GitState(head, dirty=True)
    committed = commit_all(repo)
    assert state(policy) == GitState(committed, dirty=False)


def test_untracked_file_and_a_folder_in_the_way_are_dirty(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    untracked = repo / "policies" / "new.yaml"
    untracked.write_text("x: 1\n")
    assert state(untracked) == GitState(head, dirty=True)
    (repo / "policies" / "ci.yaml").unlink()
    (repo / "policies" / "ci.yaml").mkdir()
    nested = repo / "policies" / "ci.yaml" / "inner.yaml"
    nested.write_text("x: 1\n")
    assert state(nested) == GitState(head, dirty=True)


@pytest.mark.parametrize("offsets", ["true", "false"], ids=["ofs-delta", "ref-delta"])
def test_packed_objects_with_deltas_and_packed_refs(repo: Path, offsets: str) -> None:
    policy = repo / "policies" / "ci.yaml"
    for index in range(100):
        (repo / "policies" / f"f{index}.yaml").write_text(f"value: {index}\n")
    for round_ in range(12):  # big trees that change a little each time: gc stores them as deltas
        (repo / "policies" / f"f{round_}.yaml").write_text(f"round: {round_}\n")
        policy.write_text(f"name: ci\nround: {round_}\n")
        commit_all(repo, f"round {round_}")
    git(repo, "-c", f"repack.useDeltaBaseOffset={offsets}", "gc", "-q", "--aggressive")
    assert not list((repo / ".git" / "objects").glob("??/*")), "everything should be packed"
    assert not (repo / ".git" / "refs" / "heads" / "main").exists(), "the ref should be packed"
    listing = git(repo, "verify-pack", "-v", *map(str, (repo / ".git/objects/pack").glob("*.idx")))
    deltified_trees = [line for line in listing.splitlines() if " tree " in line and len(line.split()) == 7]
    assert deltified_trees, "the pack should hold trees stored as deltas"
    head = git(repo, "rev-parse", "HEAD")
    assert state(policy) == GitState(head, dirty=False)
    git(repo, "checkout", "-q", "HEAD~5")  # detached HEAD, an older tree (deltified against newer ones)
    assert state(policy) == GitState(git(repo, "rev-parse", "HEAD"), dirty=False)


def test_linked_worktree_and_submodule_style_git_file(repo: Path, tmp_path: Path) -> None:
    git(repo, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "other")
    (tmp_path / "wt" / "policies" / "ci.yaml").write_text("name: other\n")
    head = commit_all(tmp_path / "wt")
    assert (tmp_path / "wt" / ".git").is_file()
    assert state(tmp_path / "wt" / "policies" / "ci.yaml") == GitState(head, dirty=False)
    moved = tmp_path / "moved"  # a .git file with a relative gitdir, as submodules have
    shutil.move(str(repo / ".git"), str(tmp_path / "gitdir"))
    repo.rename(moved)
    (moved / ".git").write_text("gitdir: ../gitdir\n")
    assert state(moved / "policies" / "ci.yaml") == GitState(git(moved, "rev-parse", "main"), dirty=False)


def test_sha256_repository(tmp_path: Path) -> None:
    try:
        repo = make_repo(tmp_path / "repo", "--object-format=sha256")
    except subprocess.CalledProcessError:
        pytest.skip("this git cannot make SHA-256 repositories")
    (repo / "p.yaml").write_text("x: 1\n")
    head = commit_all(repo)
    assert len(head) == 64
    assert state(repo / "p.yaml") == GitState(head, dirty=False)
    git(repo, "gc", "-q")
    assert state(repo / "p.yaml") == GitState(head, dirty=False)


def test_unborn_branch_records_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "p.yaml").write_text("x: 1\n")
    assert state(repo / "p.yaml") is None


def test_an_embedded_bare_repository_is_not_a_repository(repo: Path, tmp_path: Path) -> None:
    """A committed folder that looks like a bare repo (HEAD, objects/, refs/) is what git itself would use."""
    other = make_repo(tmp_path / "other")
    (other / "a").write_text("a\n")
    commit_all(other)
    embedded = repo / "policies" / "embedded"
    shutil.copytree(other / ".git", embedded)
    (embedded / "p.yaml").write_text("x: 1\n")
    assert git(embedded, "rev-parse", "HEAD") == git(other, "rev-parse", "HEAD")  # git is fooled
    assert state(embedded / "p.yaml") == GitState(git(repo, "rev-parse", "HEAD"), dirty=True)


def test_a_repository_of_another_user_is_ignored(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(repo).st_uid + 1)
    assert state(repo / "policies" / "ci.yaml") is None


@pytest.mark.parametrize(
    "head",
    [
        "ref: refs/../../../../etc/hostname\n",
        "ref: refs/heads/../../HEAD\n",
        "ref: HEAD\n",
        "ref: refs/heads/main\\..\n",
        "not a commit\n",
        "ABCDEF" + "0" * 34 + "\n",
        "",
    ],
)
def test_odd_heads_record_nothing(repo: Path, head: str) -> None:
    (repo / ".git" / "HEAD").write_text(head)
    assert state(repo / "policies" / "ci.yaml") is None


def test_symbolic_ref_loop_records_nothing(repo: Path) -> None:
    (repo / ".git" / "refs" / "heads" / "main").write_text("ref: refs/heads/loop\n")
    (repo / ".git" / "refs" / "heads" / "loop").write_text("ref: refs/heads/main\n")
    assert state(repo / "policies" / "ci.yaml") is None


def _in_time(function: object, *args: object) -> object:
    """Call ``function`` in a thread; fail (instead of hanging the suite) if it blocks."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(function(*args)), daemon=True)  # type: ignore[operator]
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the reader blocked"
    return result[0]


@pytest.mark.parametrize("name", ["HEAD", "refs/heads/main"])
def test_fifo_or_symlink_where_a_file_should_be(repo: Path, name: str) -> None:
    target = repo / ".git" / name
    target.unlink()
    os.mkfifo(target)
    assert _in_time(state, repo / "policies" / "ci.yaml") is None
    target.unlink()
    target.symlink_to("/dev/zero")
    assert _in_time(state, repo / "policies" / "ci.yaml") is None


def test_fifo_object_and_pack_leave_the_commit_dirty(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    loose = repo / ".git" / "objects" / head[:2] / head[2:]
    loose.unlink()
    os.mkfifo(loose)
    assert _in_time(state, repo / "policies" / "ci.yaml") == GitState(head, dirty=True)


def test_forged_loose_object_is_not_trusted(repo: Path) -> None:
    """An object whose bytes do not hash to its name (a swapped tree) is never believed."""
    head = git(repo, "rev-parse", "HEAD")
    loose = repo / ".git" / "objects" / head[:2] / head[2:]
    other = next(p for p in (repo / ".git" / "objects").glob("??/*") if p != loose)
    loose.chmod(0o644)
    loose.write_bytes(other.read_bytes())
    assert state(repo / "policies" / "ci.yaml") == GitState(head, dirty=True)


@pytest.fixture(scope="module")
def packed_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("packed") / "repo")
    for round_ in range(4):
        (repo / "p.yaml").write_text(f"round: {round_}\n" + "padding\n" * 100)
        commit_all(repo)
    git(repo, "gc", "-q", "--aggressive")
    return repo


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_packs_never_raise(
    packed_repo: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Whatever bytes a pack or its index holds, the reader answers (never raises, never hangs)."""
    copy = tmp_path_factory.mktemp("damaged") / "repo"
    shutil.copytree(packed_repo, copy)
    head = git(copy, "rev-parse", "HEAD")
    target = data.draw(st.sampled_from(sorted((copy / ".git/objects/pack").glob("*.*"))))
    raw = bytearray(target.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    target.chmod(0o644)
    target.write_bytes(bytes(raw))
    found = state(copy / "p.yaml")
    assert found is not None and found.commit == head


def _pack_entry_header(kind: int, size: int) -> bytes:
    out = [(kind << 4) | (size & 15)]
    size >>= 4
    while size:
        out[-1] |= 0x80
        out.append(size & 0x7F)
        size >>= 7
    return bytes(out)


def _ofs(distance: int) -> bytes:
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.insert(0, 0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(out)


def _varint(value: int) -> bytes:
    out = []
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _write_pack(repo: Path, pack: bytes, entries: dict[bytes, int]) -> None:
    """A pack and its version 2 index (checksums left out: the reader does not rely on them)."""
    names = sorted(entries)
    fanout = b"".join(struct.pack(">I", sum(1 for n in names if n[0] <= i)) for i in range(256))
    index = b"\377tOc" + struct.pack(">I", 2) + fanout + b"".join(names) + bytes(4 * len(names))
    index += b"".join(struct.pack(">I", entries[n]) for n in names)
    folder = repo / ".git" / "objects" / "pack"
    folder.mkdir(exist_ok=True)
    (folder / "pack-hostile.pack").write_bytes(pack)
    (folder / "pack-hostile.idx").write_bytes(index)


def _count_deltas(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    applied: list[int] = []
    real = gitstate._apply_delta
    monkeypatch.setattr(gitstate, "_apply_delta", lambda base, d: applied.append(1) or real(base, d))
    return applied


def test_a_delta_chain_bomb_stops_at_the_work_budget(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HEAD's commit stored as 4000 deltas that each rebuild 8 MiB: 32 GB of work, stopped after ~64 MiB."""
    head = git(repo, "rev-parse", "HEAD")
    (repo / ".git" / "objects" / head[:2] / head[2:]).unlink()
    size = 8 << 20
    pack = bytearray(b"PACK" + struct.pack(">II", 2, 4001))
    offsets = [len(pack)]
    pack += _pack_entry_header(1, size) + zlib.compress(bytes(size))
    delta = _varint(size) + _varint(size) + bytes([0x80 | 0x40, 0x80])  # copy 8 MiB from offset 0
    for _ in range(4000):
        offsets.append(len(pack))
        pack += _pack_entry_header(6, len(delta)) + _ofs(offsets[-1] - offsets[-2]) + zlib.compress(delta)
    _write_pack(repo, bytes(pack), {bytes.fromhex(head): offsets[-1]})
    applied = _count_deltas(monkeypatch)
    assert state(repo / "policies" / "ci.yaml") == GitState(head, dirty=True)
    assert 1 <= len(applied) <= 8


@pytest.mark.parametrize(("links", "applied"), [(3000, 3000), (5000, 0)])
def test_reference_delta_chains_are_followed_without_recursion_up_to_the_cap(
    repo: Path, monkeypatch: pytest.MonkeyPatch, links: int, applied: int
) -> None:
    """Each reference delta names its base by id: a chain deeper than Python's stack, then past the cap."""
    head = git(repo, "rev-parse", "HEAD")
    (repo / ".git" / "objects" / head[:2] / head[2:]).unlink()
    ids = [hashlib.sha1(b"%d" % i).digest() for i in range(links)] + [bytes.fromhex(head)]
    pack = bytearray(b"PACK" + struct.pack(">II", 2, links + 1))
    entries = {ids[0]: len(pack)}
    pack += _pack_entry_header(3, 100) + zlib.compress(b"x" * 100)
    delta = _varint(100) + _varint(100) + bytes([0x80 | 0x10, 100])  # copy the 100 bytes
    for index in range(1, links + 1):
        entries[ids[index]] = len(pack)
        pack += _pack_entry_header(7, len(delta)) + ids[index - 1] + zlib.compress(delta)
    _write_pack(repo, bytes(pack), entries)
    counted = _count_deltas(monkeypatch)
    assert state(repo / "policies" / "ci.yaml") == GitState(head, dirty=True)  # a blob, not the commit
    assert len(counted) == applied


_STRICT = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: ci}
signatures: {required: false}
limits: {max: {memory: 64MiB}}
"""
_LENIENT = _STRICT.replace("64MiB", "4GiB")
_HELLO = Path(__file__).resolve().parents[1] / "cases" / "_shared" / "hello.wasm"
_MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: m}}
tools: {{hello: {{module: hello.wasm, sha256: {sha256}}}}}
jobs: [{{name: greet, tool: hello}}]
"""


def test_a_policy_replaced_by_its_committed_bytes_after_it_was_read_is_recorded_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiler reads the policy, then the commit: a file put back to the committed bytes in
    between (by whoever may write it) must not make the lenient policy that was compiled look like
    the committed one."""
    import runner.api as api

    repo = make_repo(tmp_path / "repo")
    (repo / "policies").mkdir()
    policy = repo / "policies" / "ci.yaml"
    policy.write_text(_STRICT)
    shutil.copyfile(_HELLO, repo / "hello.wasm")
    (repo / "m.yaml").write_text(_MANIFEST.format(sha256=hashlib.sha256(_HELLO.read_bytes()).hexdigest()))
    commit = commit_all(repo)
    policy.write_text(_LENIENT)  # the uncommitted, lenient edit
    loaded = api.load_policy

    def load_then_restore(path: Path, root: Path) -> object:
        found = loaded(path, root)
        policy.write_text(_STRICT)  # put back before the commit is read
        return found

    monkeypatch.setattr(api, "load_policy", load_then_restore)
    plan = api.compile_manifests([repo / "m.yaml"], policy, root=repo)
    assert plan.policy.sha256 == hashlib.sha256(_LENIENT.encode()).hexdigest()
    assert plan.policy.git_commit == f"{commit}+dirty"
    policy.write_text(_STRICT)
    monkeypatch.undo()
    assert api.compile_manifests([repo / "m.yaml"], policy, root=repo).policy.git_commit == commit
