"""Hermetic jobs: what a guest sees of time and chance, and what its mounts held before and after.

A hermetic job (``hermetic: true``, docs/hermetic.md) runs in a virtual world fixed by the plan:

- :func:`settings` picks the world at compile time: the clock starts at ``SOURCE_DATE_EPOCH`` when
  it is set, else at :data:`DEFAULT_EPOCH_S`; each clock read advances it by :data:`TICK_NS`; the
  random stream's seed is the manifest's, else derived from the job's id.
- :class:`VirtualWorld` is that world for one run of the job, kept by the worker process that runs
  it (the sandbox's WASI shadows read it): sleeps advance the virtual clock instead of waiting.
- :func:`digest_tree` digests a mount (a Merkle tree: a file's digest is its content's, a folder's is
  that of its sorted entries), bounded by :data:`MAX_FILES` and :data:`MAX_BYTES`, symlinks recorded
  by their target and never followed; :func:`snapshot` and :func:`outputs` turn the mounts of a job
  into its log record: inputs before the run, files added, changed and removed after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.canonical import canonical_json, sha256_hex
from runner.errors import InputError, Location
from runner.plan import Hermetic, JobSpec

__all__ = [
    "DEFAULT_EPOCH_S",
    "TICK_NS",
    "MAX_FILES",
    "MAX_BYTES",
    "Tree",
    "VirtualWorld",
    "settings",
    "digest_tree",
    "snapshot",
    "outputs",
    "inputs_record",
    "job_dict",
]

DEFAULT_EPOCH_S = 1_700_000_000  # 2023-11-14T22:13:20Z: the plan's own fixed time
TICK_NS = 1_000_000  # each clock read moves the virtual clocks on by 1 ms
MAX_FILES = 100_000  # entries (files, folders, links) digested per mount
MAX_BYTES = 4 << 30  # bytes of file content digested per mount
_CHUNK = 1 << 20
_SEED_DOMAIN = b"sandrun hermetic seed v1\0"


def settings(job_id: str, spec: bool | dict[str, Any], environ: dict[str, str] | None = None) -> Hermetic:
    """The virtual world of a job from its manifest entry (``true`` or ``{seed: N}``).

    ``SOURCE_DATE_EPOCH`` (read at compile time) must be a non-negative integer; anything else
    raises ``ValueError`` for the compiler to report.
    """
    env = os.environ if environ is None else environ
    text = env.get("SOURCE_DATE_EPOCH")
    epoch_s = DEFAULT_EPOCH_S
    if text is not None:
        if not text.isascii() or not text.isdigit() or len(text) > 12:
            raise ValueError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, not {text!r}")
        epoch_s = int(text)
    seed = spec.get("seed") if isinstance(spec, dict) else None
    if seed is None:
        seed = int.from_bytes(hashlib.sha256(_SEED_DOMAIN + job_id.encode()).digest()[:8], "little")
    return Hermetic(epoch_ns=epoch_s * 1_000_000_000, tick_ns=TICK_NS, seed=seed)


@dataclass(slots=True)
class VirtualWorld:
    """One run's virtual clocks and random stream. ``elapsed_ns`` is the time since the start:
    the realtime clock reads ``epoch + elapsed``, the monotonic and CPU clocks read ``elapsed``."""

    hermetic: Hermetic
    elapsed_ns: int = 0
    _random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        # Reproducible, not secret: a hermetic guest must never use random_get for keys (docs).
        self._random = random.Random(self.hermetic.seed)

    def read(self, realtime: bool) -> int:
        """A clock read: the clock moves on by one tick first, so two reads never look equal."""
        self.elapsed_ns += self.hermetic.tick_ns
        return self.elapsed_ns + (self.hermetic.epoch_ns if realtime else 0)

    def random_bytes(self, count: int) -> bytes:
        return self._random.randbytes(count)

    def sleep_until(self, due_ns: int) -> None:
        """A sleep completes at once: the monotonic clock jumps to ``due_ns`` (never back)."""
        self.elapsed_ns = max(self.elapsed_ns, due_ns)


# --- mount digests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tree:
    """A mount's digest (``sha256``) and the digest of each file or link in it, by relative path."""

    sha256: str
    files: dict[str, str]


class _Budget:
    def __init__(self, where: str) -> None:
        self.where = where
        self.entries = 0
        self.bytes = 0

    def take(self, size: int) -> None:
        self.entries += 1
        self.bytes += size
        if self.entries > MAX_FILES or self.bytes > MAX_BYTES:
            raise InputError.one(
                "hermetic.tree-too-large",
                f"{self.where} holds more than {MAX_FILES} entries or {MAX_BYTES} bytes: too much "
                "to digest for a hermetic job",
                Location(file=self.where),
            )


def _file_digest(dir_fd: int, name: str, *, close_dir: bool = False) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    finally:
        if close_dir:
            os.close(dir_fd)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _walk(dir_fd: int, prefix: str, budget: _Budget, files: dict[str, str]) -> str:
    """The digest of one folder: of its sorted (name, kind, digest) entries; fills ``files``."""
    entries: list[tuple[str, str, str]] = []
    for name in sorted(os.listdir(dir_fd)):
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        path = f"{prefix}{name}"
        if stat.S_ISDIR(info.st_mode):
            budget.take(0)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                entries.append((name, "dir", _walk(sub, path + "/", budget, files)))
            finally:
                os.close(sub)
            continue
        if stat.S_ISREG(info.st_mode):
            budget.take(info.st_size)
            kind, digest = "file", _file_digest(dir_fd, name)
        elif stat.S_ISLNK(info.st_mode):  # recorded by its target, never followed
            budget.take(0)
            kind, digest = (
                "link",
                sha256_hex(os.readlink(name, dir_fd=dir_fd).encode("utf-8", "surrogateescape")),
            )
        else:  # a FIFO or device is never opened: only its kind counts
            budget.take(0)
            kind, digest = "other", sha256_hex(b"")
        files[path] = f"{kind}:{digest}"
        entries.append((name, kind, digest))
    return sha256_hex(canonical_json([list(entry) for entry in entries]))


def digest_tree(folder: Path) -> Tree:
    """The Merkle digest of ``folder`` (not followed if it is a symlink itself); bounded, see module doc."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        files: dict[str, str] = {}
        root = _walk(fd, "", _Budget(str(folder)), files)
        return Tree(sha256=root, files=files)
    finally:
        os.close(fd)


def snapshot(job: JobSpec, root: Path) -> dict[str, Tree]:
    """Every mount of ``job`` digested right before it runs, by guest path."""
    return {mount.guest: digest_tree(root / mount.host) for mount in job.mounts}


def inputs_record(job: JobSpec, root: Path, before: dict[str, Tree]) -> dict[str, Any]:
    """The ``hermetic`` member of a ``job.started`` record: all a replay needs besides the module."""
    assert job.hermetic is not None
    return {
        "job": job_dict(job),
        "seed": job.hermetic.seed,
        "mounts": {guest: tree.sha256 for guest, tree in before.items()},
        "stdin_sha256": None if job.stdin is None else file_sha256(root / job.stdin),
    }


def file_sha256(path: Path) -> str:
    """The digest of a regular file, never through a symlink."""
    return _file_digest(
        os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path.name, close_dir=True
    )


def job_dict(job: JobSpec) -> dict[str, Any]:
    """The job as :meth:`JobSpec.from_dict` reads it back."""
    return dataclasses.asdict(job)


def outputs(job: JobSpec, root: Path, before: dict[str, Tree]) -> list[dict[str, Any]]:
    """Each rw mount after the run: its digest and the files added, changed and removed."""
    changes: list[dict[str, Any]] = []
    for mount in job.mounts:
        if mount.mode != "rw":
            continue
        after = digest_tree(root / mount.host)
        old = before[mount.guest].files
        changes.append(
            {
                "guest": mount.guest,
                "before": before[mount.guest].sha256,
                "after": after.sha256,
                "added": {p: d for p, d in sorted(after.files.items()) if p not in old},
                "changed": {p: d for p, d in sorted(after.files.items()) if p in old and old[p] != d},
                "removed": sorted(p for p in old if p not in after.files),
            }
        )
    return changes
