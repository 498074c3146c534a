"""Keeps the runner's signing key out of reach of the processes that run guests.

A guest that took its worker over (through a Wasmtime bug) runs as the runner's user with no
syscall filter (docs/sandbox.md). Before this module it could read the key three ways: from its
own environment block (``/proc/self/environ`` keeps the strings a process started with, whatever
``os.environ`` later says), inherited through the forkserver that the runner started with
``$SANDRUN_SIGNING_KEY`` set; from the memory of ``sandrun exec``'s worker, forked straight from a
CLI whose environment held the key; and from the runner itself (``/proc/PID/environ``,
``/proc/PID/mem`` and ``ptrace`` are open to every process of the same user). So:

- the forkserver (and multiprocessing's resource tracker with it) starts from an environment
  without the key: no worker or compile child has it anywhere (:func:`withheld_from_children`);
- ``exec`` forks its worker straight from the CLI only when the CLI's environment holds no key
  (:func:`environment_holds_key`); otherwise the worker comes from the forkserver;
- a process that loaded the key makes itself non-dumpable (:func:`shield_process`), as
  ``ssh-agent`` does: its ``/proc`` files then belong to root, and other processes of the user
  can neither read its memory and environment nor attach to it; no core dump holds the key.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

__all__ = ["WITHHELD", "environment_holds_key", "shield_process", "withheld_from_children"]

WITHHELD = ("SANDRUN_SIGNING_KEY",)
"""Environment variables no child of the runner gets (the key's PEM text, ``runner.audit``)."""

_PR_SET_DUMPABLE = 4


@contextmanager
def withheld_from_children() -> Iterator[None]:
    """While a child process is started with ``exec`` (it copies the environment then): the
    environment without :data:`WITHHELD`; restored after. Callers hold a lock around it."""
    saved = {name: os.environ.pop(name) for name in WITHHELD if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def environment_holds_key() -> bool:
    """Whether this process's environment (so a child forked from it) holds the key."""
    return any(name in os.environ for name in WITHHELD)


def shield_process() -> None:
    """Make this process non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``), where the OS allows."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
