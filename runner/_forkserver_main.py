"""Imported only in the forkserver (its preload list): import the caller's main script there once.

What ``multiprocessing.forkserver.main`` does for a ``"__main__"`` preload, with the path
:func:`runner.forkserver.start` passed in the environment (CPython 3.11 never passes it). The
variable is removed first, so no child sees it.
"""

from __future__ import annotations

import os
from multiprocessing import process, spawn

from runner.forkserver import MAIN_ENV


def _import_main() -> None:
    path = os.environ.pop(MAIN_ENV, None)
    if not path:
        return
    process.current_process()._inheriting = True  # type: ignore[attr-defined]
    try:
        spawn.import_main_path(path)
    except (Exception, SystemExit):  # each child then runs it again and fails as it would have
        pass
    finally:
        del process.current_process()._inheriting  # type: ignore[attr-defined]


_import_main()
