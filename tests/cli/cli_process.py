"""The CLI run as CI runs it: ``python -m runner`` in a subprocess, with ``CI`` set."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sandrun(
    *args: str,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 300,
    address_space: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """``address_space``: an ``RLIMIT_AS`` for the CLI, so an endless read fails instead of
    filling the machine's memory."""

    def limit() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "CI": "true", **(env or {})},
        input=input,
        preexec_fn=None if address_space is None else limit,  # noqa: PLW1509
    )


def workers_of(pid: int) -> list[int]:
    """Live ``sandrun-worker`` processes descending from ``pid`` (via the forkserver)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry)], names[int(entry)] = int(fields[1]), name
    found = []
    for child, name in names.items():
        ancestor = parents.get(child)
        while ancestor not in (None, 0, 1, pid):
            ancestor = parents.get(ancestor)
        if name == "sandrun-worker" and ancestor == pid:
            found.append(child)
    return found
