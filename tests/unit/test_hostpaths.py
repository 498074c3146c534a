"""One folder under two names: bind mounts (a container's volumes) and case-insensitive folders
must not let a ``rw`` mount reach the output folder, nor any mount a key (runner/hostpaths.py).
Real bind mounts, through the CLI: tests/cli/test_cli_hostile_folders.py."""

from __future__ import annotations

from pathlib import Path

from runner.hostpaths import Place, mount_table, overlaps, place


def test_names_alone_still_decide_nesting(tmp_path: Path) -> None:
    (tmp_path / "out" / "logs").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    table = mount_table()
    out, logs, root, outside = (
        place(path.resolve(), table)
        for path in (tmp_path / "out", tmp_path / "out" / "logs", tmp_path, tmp_path / "outside")
    )
    assert overlaps(out, logs) and overlaps(logs, out) and overlaps(root, out) and overlaps(out, out)
    assert not overlaps(out, outside) and not overlaps(outside, logs)


def test_the_mount_table_is_read_with_its_escapes(tmp_path: Path) -> None:
    table = mount_table()
    assert any(point == "/" for point, _, _ in table)
    spaced = tmp_path / "a b\\c"
    spaced.mkdir()
    assert place(spaced.resolve(), table).views  # the folder of its filesystem that shows it


def test_a_folder_reached_under_another_spelling_is_found_by_identity() -> None:
    """What a case-insensitive folder looks like: ``OUT`` and ``out`` differ as text but are one
    folder (same device and inode), so nesting is decided on identities too."""
    out = Place("/w/sandrun-out", ((1, 10), (1, 5), (1, 2)), ())
    alias = Place("/w/SANDRUN-OUT", ((1, 10), (1, 5), (1, 2)), ())
    inside = Place("/w/SANDRUN-OUT/logs", ((1, 11), (1, 10), (1, 5), (1, 2)), ())
    container = Place("/W", ((1, 5), (1, 2)), ())
    elsewhere = Place("/w/other", ((1, 12), (1, 5), (1, 2)), ())
    assert overlaps(alias, out) and overlaps(inside, out) and overlaps(container, out)
    assert not overlaps(elsewhere, out)


def test_views_of_one_filesystem_nest_across_mounts() -> None:
    """``-v /srv/work:/w -v /srv/work/out:/out``: ``/w`` shows ``/srv/work`` of device 8:1, and
    ``/out`` shows ``/srv/work/out`` of it: no path and no ancestor tells, the mount table does."""
    w = Place("/w", ((8, 100), (7, 2)), (("8:1", "/srv/work"),))
    out = Place("/out", ((8, 101), (7, 2)), (("8:1", "/srv/work/out"),))
    other_disk = Place("/data", ((9, 100), (7, 2)), (("9:1", "/srv/work"),))
    holds_a_volume = Place("/x", ((7, 50), (7, 2)), (("8:1", "/srv/work/out/logs"), ("7:0", "/x")))
    assert overlaps(w, out) and overlaps(out, w)
    assert not overlaps(other_disk, out)
    assert overlaps(holds_a_volume, out)  # a mount below /x shows a folder inside out
