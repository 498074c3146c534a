"""The shared forkserver imports the caller's main script once, not once per child."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    with open(os.environ["MARKS"], "a") as marks:
        marks.write(__name__ + "\\n")

    if __name__ == "__main__":
        from runner import forkserver

        for _ in range(3):  # what three job workers or compile children do
            child = forkserver.start().Process(target=os.getpid)
            child.start()
            child.join()
            assert child.exitcode == 0, child.exitcode
    """
)


def _run(tmp_path: Path, **env: str) -> list[str]:
    script = tmp_path / "main_script.py"
    script.write_text(SCRIPT)
    marks = tmp_path / "marks"
    subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "MARKS": str(marks), **env},
        check=True,
        timeout=120,
    )
    return marks.read_text().split()


def test_children_do_not_run_the_main_script_again(tmp_path: Path) -> None:
    # once here, once in the server; before, once more in each child (a benchmark importing
    # runner.api: ~0.2 s per worker)
    assert _run(tmp_path) == ["__main__", "__mp_main__"]


def test_a_main_path_in_the_callers_environment_never_reaches_the_server(tmp_path: Path) -> None:
    other = tmp_path / "other.py"
    planted = tmp_path / "planted"
    other.write_text(f"open({str(planted)!r}, 'w').close()\n")
    assert _run(tmp_path, SANDRUN_FORKSERVER_MAIN=str(other)) == ["__main__", "__mp_main__"]
    assert not planted.exists()
