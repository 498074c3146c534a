"""The files a run leaves in ``--out``: ``report.json``, ``junit.xml``, ``summary.md`` and ``logs/``.

Nothing is ever half-written: each report file is replaced atomically (temporary file, fsync,
``os.replace``), and the ``logs/`` folder is built complete under a temporary name and then
swapped in, so it always holds the logs of one run, never a mix with stale files of an earlier
run. ``report.json`` is written last: once it is there, the rest of the run's outputs are too.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.fileio import write_atomic
from runner.report import render_json, render_junit, render_markdown
from runner.results import Outcome

__all__ = ["write_outputs", "log_path"]

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


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``: two system calls, as this runs twice per job."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _write_logs(out_dir: Path, report: Mapping[str, Any], outcomes: Mapping[str, Outcome]) -> None:
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".logs-"))
    try:
        for job in report["jobs"]:
            outcome = outcomes.get(f"{job['manifest']}/{job['name']}")
            if outcome is None:  # never ran: no log, rather than an empty one that looks like output
                continue
            for stream, data in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
                if not data:  # no output, no file: creating one costs more than the job on some disks
                    continue
                target = staging / log_path(job["manifest"], job["name"], stream).relative_to("logs")
                target.parent.mkdir(parents=True, exist_ok=True)
                _write_new(target, data)
        os.chmod(staging, 0o755)
        logs = out_dir / "logs"
        retired = out_dir / f"{staging.name}.old"
        if logs.is_symlink() or logs.exists():
            os.replace(logs, retired)
        os.replace(staging, logs)
        if retired.is_symlink():
            retired.unlink()
        elif retired.exists():
            shutil.rmtree(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_outputs(out_dir: Path, report: Mapping[str, Any], outcomes: Mapping[str, Outcome]) -> None:
    """Write the run's reports and logs into ``out_dir`` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_logs(out_dir, report, outcomes)
    write_atomic(out_dir / "junit.xml", render_junit(report).encode())
    write_atomic(out_dir / "summary.md", render_markdown(report).encode())
    write_atomic(out_dir / "report.json", render_json(report).encode())
