"""The per-user secret that authenticates the disk cache's entries, kept outside the cache folder.

A cache folder can be filled by others: restored by CI from a shared store, copied between
machines, or left on a shared self-hosted runner. Checking an entry against its own sidecar proves
nothing then (whoever wrote the ``.cwasm`` wrote a matching sidecar), so every entry carries an
MAC made with a secret only this user's runner knows (:mod:`runner.cache`).

The secret is 32 random bytes, stored as 64 hex digits in ``$SANDRUN_CACHE_KEY`` (a file path;
meant for tests and unusual setups), else ``$XDG_STATE_HOME/sandrun/cache.key``, else
``~/.local/state/sandrun/cache.key``: state, not cache, so restoring or deleting a cache folder
never carries or drops it. It is created on first use, ``0600`` in a folder made ``0700``, and
published with ``link(2)`` so a concurrent runner either wins the race or reads the winner's
complete key. Every process of the same user (worker or compile subprocesses included) reads the
same file and so shares the key.

A key file that is a symlink, not a regular file, not owned by the user, readable or writable by
group or others, or not exactly 64 hex digits is **refused, not replaced**: the disk cache is then
off (``ModuleCache.disk_problem`` says why). A key others could read may have been copied; the
operator should notice that and delete the file (a new key is made on the next run and every
cached module is compiled once more), rather than have it swapped silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SECRET_ENV", "CacheSecret", "CacheSecretError", "default_secret_path", "load_secret"]

SECRET_ENV = "SANDRUN_CACHE_KEY"
_HEX_SECRET = re.compile(rb"([0-9a-f]{64})\n?")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class CacheSecretError(Exception):
    """The cache secret cannot be used; the message says why (never the secret)."""


@dataclass(frozen=True, slots=True, repr=False)
class CacheSecret:
    """The secret bytes and a public id of them (recorded in each entry, so a new key is a miss)."""

    key: bytes
    key_id: str


def default_secret_path() -> Path:
    """``$SANDRUN_CACHE_KEY``, else ``$XDG_STATE_HOME/sandrun/cache.key`` (``~/.local/state``)."""
    explicit = os.environ.get(SECRET_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sandrun" / "cache.key"


def load_secret(path: Path) -> CacheSecret:
    """The secret in ``path``, created first if absent; raise ``CacheSecretError`` when unusable."""
    _check_folder(path.parent)
    if not os.path.lexists(path):
        _create(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise CacheSecretError(f"cannot open the cache key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as stream:
        _refuse_unless_private(os.fstat(stream.fileno()), path, directory=False)
        match = _HEX_SECRET.fullmatch(stream.read(100))
    if match is None:
        raise CacheSecretError(f"the cache key {path} is not 64 lowercase hex digits")
    key = bytes.fromhex(match.group(1).decode("ascii"))
    return CacheSecret(key, hashlib.sha256(b"sandrun-cache-key-id\n" + key).hexdigest()[:16])


def _check_folder(folder: Path) -> None:
    """The key's folder: created 0700; it must be the user's and writable by nobody else."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        raise CacheSecretError(f"cannot create {folder}: {exc.strerror}") from None
    _refuse_unless_private(info, folder, directory=True)


def _refuse_unless_private(info: os.stat_result, path: Path, *, directory: bool) -> None:
    """The key file (or its folder) must be the user's own: nobody else may write it, nor read the key."""
    if not (stat.S_ISDIR if directory else stat.S_ISREG)(info.st_mode):
        raise CacheSecretError(
            f"{path} is not a {'directory' if directory else 'regular file'} (or is a symlink)"
        )
    if info.st_uid != os.getuid():
        raise CacheSecretError(f"{path} is not owned by the current user")
    if info.st_mode & (0o022 if directory else 0o077):
        raise CacheSecretError(
            f"{path} is {'writable' if directory else 'accessible'} to group or others (mode "
            f"{stat.S_IMODE(info.st_mode):o}, need {'no group/other write' if directory else '600'})"
            + ("" if directory else "; delete it to make a new one")
        )


def _create(path: Path) -> None:
    """Write a new secret to a private temporary file and link it into place (never replaces)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(secrets.token_hex(32).encode("ascii") + b"\n")
            stream.flush()
            os.fsync(stream.fileno())
        with contextlib.suppress(FileExistsError):  # another runner made one first: use that one
            os.link(tmp, path)
    except OSError as exc:
        raise CacheSecretError(f"cannot create the cache key {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
