"""Progress of a batch as it runs, on stderr: one updating line on a terminal, plain lines in CI.

The executor reports :class:`ProgressEvent` values; :class:`ProgressDisplay` turns them into text.
The terminal/plain decision is a plain function of the stream and the environment
(:func:`wants_live`), injected so that both modes are tested without a terminal. Plain lines look
like ``[3/10] passed docs/lint-readme (12 ms)``; a CI log keeps every one of them, which an
updating line would garble.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TextIO

from runner.report import sanitize_text
from runner.results import Status

__all__ = ["ProgressEvent", "ProgressDisplay", "wants_live", "make_progress"]

_CLEAR = "\r\x1b[2K"
_REDRAW_S = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressEvent:
    """A job started or finished. ``index`` is its place in the plan, ``total`` the plan's size."""

    kind: Literal["started", "finished"]
    job_id: str
    index: int
    total: int
    status: Status | None = None
    wall_ms: int | None = None
    reason: str | None = None


def wants_live(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """An updating line only on a terminal, and never when ``CI`` is set (to anything but 0/false)."""
    if environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressDisplay:
    """Consumes :class:`ProgressEvent` values (the executor calls it from one thread at a time).

    Live mode redraws one status line (done / running / failed, the last job) at most every 50 ms,
    and prints a permanent line for every job that did not pass, so failures stay on screen. Call
    :meth:`close` at the end to leave the cursor on a fresh line.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool,
        width: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._live = live
        self._width = max(width, 20)
        self._clock = clock
        self._done = 0
        self._running: set[str] = set()
        self._failed = 0
        self._total = 0
        self._last = ""
        self._drawn_at: float | None = None

    def __call__(self, event: ProgressEvent) -> None:
        self._total = event.total
        if event.kind == "started":
            self._running.add(event.job_id)
            self._last = event.job_id
            if self._live:
                self._redraw(force=False)
            return
        self._done += 1
        self._running.discard(event.job_id)
        if event.status in ("failed", "denied"):
            self._failed += 1
        line = self._line(event)
        if not self._live:
            self._stream.write(line + "\n")
        elif event.status == "passed":
            self._last = event.job_id
            self._redraw(force=self._done == self._total)
        else:
            self._stream.write(_CLEAR + line[: self._width] + "\n")
            self._redraw(force=True)
        self._stream.flush()

    def close(self) -> None:
        """End the live status line (nothing to do in plain mode)."""
        if self._live and self._drawn_at is not None:
            self._redraw(force=True)
            self._stream.write("\n")
            self._stream.flush()
            self._drawn_at = None

    def _line(self, event: ProgressEvent) -> str:
        took = f" ({event.wall_ms} ms)" if event.wall_ms is not None else ""
        why = f": {sanitize_text(event.reason, limit=200)}" if event.reason else ""
        return (
            f"[{self._done}/{event.total}] {event.status} {sanitize_text(event.job_id, limit=200)}{took}{why}"
        )

    def _redraw(self, *, force: bool) -> None:
        now = self._clock()
        if not force and self._drawn_at is not None and now - self._drawn_at < _REDRAW_S:
            return
        self._drawn_at = now
        status = (
            f"sandrun [{self._done}/{self._total}] {len(self._running)} running · {self._failed} failed"
            f" · {sanitize_text(self._last, limit=200)}"
        )
        self._stream.write(_CLEAR + status[: self._width - 1])
        self._stream.flush()


def make_progress(
    stream: TextIO | None = None, *, environ: Mapping[str, str] | None = None
) -> ProgressDisplay:
    """A display on ``stream`` (default stderr), live or plain as :func:`wants_live` decides."""
    stream = stream if stream is not None else sys.stderr
    environ = environ if environ is not None else os.environ
    width = shutil.get_terminal_size(fallback=(100, 24)).columns
    return ProgressDisplay(stream, live=wants_live(stream, environ), width=width)
