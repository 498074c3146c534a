"""The one forkserver every child of Sandrun comes from: job workers and compile children.

The runner has threads, so children are never forked from it directly; they fork from a server
process (``multiprocessing``'s forkserver) that imported what they need once. Python has a single
forkserver per process, and its preload list is fixed when it starts, so both kinds of child share
one list here (before, whichever started first decided, and a worker then spent ~0.3 s importing
``runner.sandbox`` itself).

A child also runs the caller's main script again (``multiprocessing`` does that so pickles can
name its functions), unless the server has it already. The server is meant to import it once
(the ``"__main__"`` preload) but CPython 3.11 never passes it the path, so each worker re-ran
``sandrun``'s script or a library caller's whole program (a benchmark importing ``runner.api``:
~0.2 s per worker). :func:`start` hands the path over itself and
:mod:`runner._forkserver_main` imports it in the server, as ``__mp_main__`` like the children
would; then no child imports it again.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.context
import os
import threading

__all__ = ["MAIN_ENV", "PRELOAD", "context", "start"]

MAIN_ENV = "SANDRUN_FORKSERVER_MAIN"
"""How :func:`start` tells the server which main script to import (set only while it starts)."""
PRELOAD = ("runner._forkserver_main", "runner.worker", "runner.compiling")

_lock = threading.Lock()


@functools.cache
def context() -> multiprocessing.context.ForkServerContext:
    """The forkserver context, with the shared preload list."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def start() -> multiprocessing.context.ForkServerContext:
    """Start the server unless it runs (a few microseconds then); call before starting a child.

    The caller's main script path goes to the server in :data:`MAIN_ENV`, set only while the
    server starts and always set or removed here (a value in the caller's own environment never
    reaches the server). The signing key never does (:mod:`runner.keyguard`).
    """
    from multiprocessing import forkserver, spawn  # not for a command that starts no server (exec)

    from runner.keyguard import withheld_from_children

    ctx = context()
    main = spawn.get_preparation_data("sandrun").get("init_main_from_path")
    with _lock, withheld_from_children():  # no child of the server gets the signing key
        saved = os.environ.pop(MAIN_ENV, None)
        if main is not None:
            os.environ[MAIN_ENV] = main
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop(MAIN_ENV, None)
            if saved is not None:
                os.environ[MAIN_ENV] = saved
    return ctx
