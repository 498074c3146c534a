"""The files a run leaves in ``--out``: ``report.json``, ``junit.xml``, ``summary.md`` and ``logs/``.

Nothing is ever half-written: each report file is replaced atomically (temporary file, fsync,
``os.replace``), and the ``logs/`` folder is filled while the jobs run under a temporary name and
then swapped in, so it always holds the logs of one run, never a mix with stale files of an earlier
run. ``report.json`` is written last: once it is there, the rest of the run's outputs are too.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from runner.errors import AuditError, InputError, Location, SandrunError
from runner.fileio import fsync_dir, write_atomic
from runner.report import CapturedLog, render_json, render_junit, render_markdown
from runner.results import Outcome

__all__ = [
    "LogFolder",
    "write_outputs",
    "log_path",
    "captured_logs",
    "remove_outputs",
    "unsealed_on_failure",
    "REPORT_NAMES",
    "prepare_out_dir",
    "new_exec_run_dir",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _component(name: str) -> str:
    """A manifest or job name as one path component: never ``..``, a separator or a hidden file.

    Compiled names already match ``[a-z0-9][a-z0-9-]*`` and pass unchanged; this only matters for
    a plan crafted by hand.
    """
    return _UNSAFE.sub("_", name) or "_"


def log_path(manifest: str, name: str, stream: str) -> Path:
    """Where a job's stream goes, relative to the output folder: ``logs/<manifest>/<job>.<stream>``."""
    return Path("logs", _component(manifest), f"{_component(name)}.{stream}")


_LOG_READ_MAX = 64 << 20  # a log larger than any output cap is not one this runner wrote
_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # an empty stream: no file


def captured_logs(
    out_dir: Path, report: Mapping[str, Any], *, link_from: Path | None = None
) -> dict[str, dict[str, CapturedLog]]:
    """The log files of ``report``'s jobs that exist in ``out_dir`` and hold exactly that job's
    captured bytes (their sha256 is the report's): a log of another run, a skipped or denied job
    or an empty stream gives none, so no report links a file that was never written. Paths are
    relative to ``link_from`` (default: ``out_dir``, where the run's reports are)."""
    import hashlib

    base = link_from if link_from is not None else out_dir
    found: dict[str, dict[str, CapturedLog]] = {}
    for job in report["jobs"]:
        for stream in ("stdout", "stderr"):
            digest = job.get(f"{stream}_sha256")
            if digest is None or digest == _EMPTY_SHA256:
                continue
            path = out_dir / log_path(job["manifest"], job["name"], stream)
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_size > _LOG_READ_MAX:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() != digest:
                continue
            link = Path(os.path.relpath(path, base)).as_posix()
            text = data.decode("utf-8", errors="replace")
            found.setdefault(f"{job['manifest']}/{job['name']}", {})[stream] = CapturedLog(link, text)
    return found


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``: two system calls, as this runs twice per job."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class LogFolder:
    """A run's ``logs/`` folder, filled as jobs finish and swapped in whole by :meth:`commit`.

    Each job's output goes to disk as soon as the job ends, so no output waits in memory for the
    end of the run: a 10,000-job batch of chatty tools holds at most ``max_pending`` bytes of
    output, not all of it. The files are created by a writer thread: creating a file is kernel
    work (from 10 µs to several hundred on some disks) that runs without the GIL, so it overlaps
    with the next jobs instead of adding to them. Until the commit the files live in a hidden
    staging folder; leaving the ``with`` block without committing removes it, and the previous
    run's ``logs/`` stays as it was.
    """

    def __init__(self, out_dir: Path, *, max_pending: int = 64 << 20) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".logs-"))
        self._committed = False
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._queue: deque[tuple[Path, bytes]] = deque()
        self._pending = 0  # bytes queued and not written yet
        self._closing = False
        self._error: OSError | None = None
        self._writer: threading.Thread | None = None

    def add(self, manifest: str, name: str, outcome: Outcome) -> None:
        """Queue one job's captured streams (none for a stream it left empty); raises the error of
        an earlier write that failed. Waits while ``max_pending`` bytes are already queued."""
        for stream, data in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
            if not data:  # no output, no file: creating one costs more than the job on some disks
                continue
            target = self.staging / log_path(manifest, name, stream).relative_to("logs")
            with self._cond:
                while self._pending and self._pending + len(data) > self._max_pending and not self._error:
                    self._cond.wait()
                if self._error is not None:
                    raise self._error
                self._queue.append((target, data))
                self._pending += len(data)
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name="sandrun-logs", daemon=True)
                    self._writer.start()
                self._cond.notify_all()

    def _write_loop(self) -> None:
        folders: set[Path] = set()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                target, data = self._queue.popleft()
            try:
                if self._error is None:
                    if target.parent not in folders:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        folders.add(target.parent)
                    _write_new(target, data)
            except OSError as exc:
                self._error = exc  # raised by the next add() or by commit()
            with self._cond:
                self._pending -= len(data)
                self._cond.notify_all()

    def _drain(self, *, discard: bool = False) -> None:
        """Stop the writer once every queued file is written (dropped after a failure, or when
        ``discard``: the run is abandoned)."""
        with self._cond:
            self._closing = True
            if discard:
                self._pending -= sum(len(data) for _, data in self._queue)
                self._queue.clear()
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()

    def commit(self) -> None:
        """Replace ``out_dir/logs`` with this run's logs, once all of them are written."""
        self._drain()
        if self._error is not None:
            raise self._error
        os.chmod(self.staging, 0o755)
        logs = self.out_dir / "logs"
        retired = self.out_dir / f"{self.staging.name}.old"
        if logs.is_symlink() or logs.exists():
            os.replace(logs, retired)
        os.replace(self.staging, logs)
        self._committed = True
        if retired.is_symlink():
            retired.unlink()
        elif retired.exists():
            shutil.rmtree(retired)

    def __enter__(self) -> LogFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._committed:
            self._drain(discard=True)
            shutil.rmtree(self.staging, ignore_errors=True)


REPORT_NAMES = ("report.json", "junit.xml", "summary.md", "checkpoint.txt")
_OPENED_BY_NAME = "audit."  # audit.jsonl, audit.lock, audit.jsonl.torn-*/cut-*: opened, not renamed


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and refuse one that would make the run write, delete or hang
    somewhere else (``out.unsafe``, exit 2), before anything is written.

    The folder is often not the operator's own making: the default ``sandrun-out`` lies in a
    checkout, and a repository can commit it as a symlink (the run would then replace ``logs/`` and
    the reports wherever it points) or commit ``audit.jsonl`` / ``audit.lock`` as symlinks (the log
    is opened by name: its records would be appended to any file the link names) or FIFOs (the run
    would block). Reports and ``logs/`` are replaced by rename, which never follows a link: links
    planted under those names are simply replaced. So the folder must be a real folder of the
    current user that others cannot write (nobody else can then plant anything after this check),
    every ``audit.*`` entry a regular file, no report name a folder and ``logs`` no file (either
    would fail every run, after its log was opened, with its log left unsealed).
    """
    out_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    _refuse_unless_private(out_dir, "the output folder", writable_by="others")
    for entry in os.scandir(out_dir):
        if entry.name.startswith(_OPENED_BY_NAME):
            wrong = not entry.is_file(follow_symlinks=False)
            what = "a regular file (a symlink, FIFO or folder): the run would write to, or block on, it"
        elif entry.name in REPORT_NAMES:
            wrong = entry.is_dir(follow_symlinks=False)
            what = "a file: a run could not replace it"
        elif entry.name == "logs":
            wrong = not (entry.is_dir(follow_symlinks=False) or entry.is_symlink())
            what = "a folder: a run could not replace it"
        else:
            continue
        if wrong:
            raise _unsafe(out_dir, f"the output folder holds {entry.name}, which is not {what}")


def new_exec_run_dir(base: Path, *, keep: int) -> Path:
    """A new private folder for one ``sandrun exec`` run in ``base`` (created 0700), keeping only
    the newest ``keep`` run folders there.

    ``base`` (``$XDG_STATE_HOME/sandrun/exec``) is deleted from, so it and the folder above it
    (which also holds the cache key) must be the user's own and writable by nobody else: a
    symlink, another user's folder or one group or others can write is refused (``out.unsafe``)
    instead of followed (older run folders would be deleted wherever it points, or wherever a
    link swapped in for it later points). Both are created 0700, whatever the umask. The clean-up
    deletes run folders only, never a link (``shutil.rmtree`` refuses one and does not follow
    those below).
    """
    base.parent.parent.mkdir(parents=True, exist_ok=True)
    for folder in (base.parent, base):  # 0700 whatever the umask (mkdir's parents=True is not)
        folder.mkdir(mode=0o700, exist_ok=True)
        _refuse_unless_private(folder, "the exec state folder", writable_by="group or others")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    folder = base / f"{stamp}-{time.time_ns() % 10**9:09d}-{os.getpid()}"
    folder.mkdir(mode=0o700)
    runs = sorted(entry.path for entry in os.scandir(base) if entry.is_dir(follow_symlinks=False))
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _refuse_unless_private(folder: Path, what: str, *, writable_by: str) -> None:
    """Raise ``out.unsafe`` when someone else could steer ``folder``: it is a symlink, not a
    folder, another user's, or writable by ``others`` (``group or others``: group write too)."""
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode):
        reason = "is a symlink"
    elif not stat.S_ISDIR(info.st_mode):
        reason = "is not a folder"
    elif info.st_uid != os.getuid():
        reason = f"is owned by another user (uid {info.st_uid})"
    elif info.st_mode & (0o002 if writable_by == "others" else 0o022):
        reason = f"is writable by {writable_by} (mode {stat.S_IMODE(info.st_mode):o})"
    else:
        return
    raise _unsafe(folder, f"{what} {reason}: the run would write, delete or block where someone else decides")


def _unsafe(folder: Path, message: str) -> SandrunError:
    return InputError.one("out.unsafe", f"refusing {message}", Location(file=str(folder)))


def remove_outputs(out_dir: Path) -> None:
    """Remove the previous run's reports and published head, ``report.json`` (the marker that a
    run's outputs are complete) first, so a run that fails before writing its own leaves none."""
    for name in REPORT_NAMES:
        (out_dir / name).unlink(missing_ok=True)
    fsync_dir(out_dir)  # the removals survive a power loss too


class _Log(Protocol):
    @property
    def sealed(self) -> bool: ...

    @property
    def head(self) -> tuple[int, str]: ...

    @property
    def run_records(self) -> int: ...


@contextmanager
def unsealed_on_failure(log: _Log, out_dir: Path) -> Iterator[None]:
    """Turn a file the run cannot write (a full disk, an I/O error) into one ``audit.write-failed``
    line and exit 4: the run's partial outputs are removed and its log, whole records only, ends
    unsealed (or, if only publishing the head failed, sealed without ``checkpoint.txt``). A failed
    write to the log itself (even of the seal, after the reports) removes the reports too."""
    try:
        yield
    except AuditError as exc:  # the log itself could not be written: no report may outlive that
        if exc.rule_id == "audit.write-failed":
            with suppress(OSError):
                remove_outputs(out_dir)
        raise
    except OSError as exc:
        with suppress(OSError):  # a failure is already being reported
            remove_outputs(out_dir)
        where = f"{exc.filename}: " if exc.filename else ""
        records, _ = log.head
        if log.sealed:
            state = "the run is sealed but its checkpoint was not published"
        elif log.run_records:
            state = f"the run ends unsealed after seq {records - 1}, every record before it whole"
        else:
            state = "nothing of this run was logged"
        raise AuditError.one(
            "audit.write-failed",
            f"writing the run's outputs failed ({where}{exc.strerror or exc}); {state}",
            Location(file=str(out_dir)),
        ) from None


def write_outputs(out_dir: Path, report: Mapping[str, Any], logs: LogFolder) -> None:
    """Swap in the run's ``logs``, then write its reports into ``out_dir``, ``report.json`` last."""
    logs.commit()
    write_atomic(out_dir / "junit.xml", render_junit(report, logs=captured_logs(out_dir, report)).encode())
    write_atomic(out_dir / "summary.md", render_markdown(report).encode())
    write_atomic(out_dir / "report.json", render_json(report).encode())
