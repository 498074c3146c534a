"""`runner.audit.tiles` checked by a reader written here from the C2SP specs alone (tlog-tiles,
tlog-checkpoint, signed-note) with `cryptography` for Ed25519: it recomputes the root from the
tiles, checks every hash against the entries and the level below, the exact set of file names, and
the checkpoint's signature."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from runner.audit.checkpoint import Checkpoint, sign_checkpoint
from runner.audit.merkle import leaf_hash, root
from runner.audit.tiles import export_tiles
from runner.errors import AuditError, InputError
from runner.signing import generate_keypair

KEY = generate_keypair()


def _h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _n(index: int) -> str:
    """tlog-tiles: zero-padded 3-digit path elements, all but the last starting with 'x'."""
    digits = str(index)
    digits = "0" * (-len(digits) % 3) + digits
    parts = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join(["x" + p for p in parts[:-1]] + [parts[-1]])


def _expected_names(size: int) -> set[str]:
    """Every tile the spec says a tree of ``size`` has (and its entry bundles), plus checkpoint."""
    names = {"checkpoint"}
    level = 0
    while size // 256**level:
        count = size // 256**level
        for kind in [str(level)] + (["entries"] if level == 0 else []):
            names |= {f"tile/{kind}/{_n(i)}" for i in range(count // 256)}
            if count % 256:
                names.add(f"tile/{kind}/{_n(count // 256)}.p/{count % 256}")
        level += 1
    return names


def _level(folder: Path, size: int, level: int) -> list[bytes]:
    """All hashes at tile level ``level`` of the tree of ``size``, read from its tiles."""
    count = size // 256**level
    hashes: list[bytes] = []
    for index in range(-(-count // 256)):
        width = min(256, count - 256 * index)
        name = folder / "tile" / str(level) / (_n(index) if width == 256 else f"{_n(index)}.p/{width}")
        data = name.read_bytes()
        assert len(data) == 32 * width
        hashes += [data[i : i + 32] for i in range(0, len(data), 32)]
    return hashes


def _perfect(hashes: list[bytes]) -> bytes:
    while len(hashes) > 1:
        hashes = [_h(b"\x01", hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def _entries(folder: Path, size: int) -> list[bytes]:
    entries: list[bytes] = []
    for index in range(-(-size // 256)):
        width = min(256, size - 256 * index)
        name = folder / "tile" / "entries" / (_n(index) if width == 256 else f"{_n(index)}.p/{width}")
        data = name.read_bytes()
        while data:
            length = int.from_bytes(data[:2], "big")
            entries.append(data[2 : 2 + length])
            data = data[2 + length :]
    return entries


def read_tiles(
    folder: Path, public_key: bytes, name: str = "sandrun", *, exact: bool = True
) -> tuple[int, bytes, list[bytes]]:
    """Check an export as a tlog client would; return (size, root, entries). ``exact``: no file
    beyond those of this size (a re-export keeps the narrower partial tiles of earlier sizes)."""
    note = (folder / "checkpoint").read_text(encoding="utf-8")
    body, _, signatures = note.partition("\n\n")
    origin, size_text, root_b64 = body.split("\n")[:3]
    size, signed_root = int(size_text), base64.b64decode(root_b64)
    key_id = _h(name.encode(), b"\n\x01", public_key)[:4]
    lines = [line for line in signatures.splitlines() if line.startswith(f"\u2014 {name} ")]
    raw = base64.b64decode(lines[0].split(" ")[2])
    assert raw[:4] == key_id
    Ed25519PublicKey.from_public_bytes(public_key).verify(raw[4:], (body + "\n").encode())
    on_disk = {str(Path(d, f).relative_to(folder)) for d, _, files in os.walk(folder) for f in files}
    assert on_disk == _expected_names(size) if exact else on_disk >= _expected_names(size)
    entries = _entries(folder, size)
    assert len(entries) == size and [_h(b"\x00", e) for e in entries] == _level(folder, size, 0)
    level = 1
    while size // 256**level:  # each hash is the head of a full tile below
        below = _level(folder, size, level - 1)
        above = _level(folder, size, level)
        assert above == [_perfect(below[256 * i : 256 * i + 256]) for i in range(len(above))]
        level += 1
    heads, offset = [], 0  # RFC 6962: the tree is its perfect subtrees, largest first
    for height in reversed(range(64)):
        if size >> height & 1:
            tile_level = height // 8
            start = offset // 256**tile_level
            heads.append(
                _perfect(_level(folder, size, tile_level)[start : start + 2 ** (height - 8 * tile_level)])
            )
            offset += 2**height
    computed = heads[-1] if heads else _h()
    for head in reversed(heads[:-1]):
        computed = _h(b"\x01", head, computed)
    assert computed == signed_root, origin
    return size, computed, entries


def _pub() -> bytes:
    return KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _checkpoint(entries: list[bytes]) -> Checkpoint:
    merkle = root([leaf_hash(e) for e in entries]).hex()
    note = Checkpoint.of_tree("example.org/log", len(entries), merkle, "ab" * 32, ("ext line",))
    return sign_checkpoint(note, KEY)


def _records(n: int) -> list[bytes]:
    return [b'{"seq":%d,"pad":"%s"}' % (i, b"x" * (i % 37)) for i in range(n)]


def test_every_tree_size_1_to_600_reads_back_under_the_independent_reader(tmp_path: Path) -> None:
    records = _records(600)
    for size in list(range(1, 300)) + [511, 512, 513, 599, 600]:
        out = tmp_path / str(size)
        done = export_tiles(out, records[:size], _checkpoint(records[:size]))
        read_size, computed, entries = read_tiles(out, _pub())
        assert (read_size, entries, done.size) == (size, records[:size], size)
        assert computed == root([leaf_hash(e) for e in records[:size]])


def test_a_tree_past_256_squared_has_a_level_2_tile(tmp_path: Path) -> None:
    records = [b"%d" % i for i in range(256 * 256 + 3)]
    export_tiles(tmp_path / "t", records, _checkpoint(records))
    assert (tmp_path / "t" / "tile" / "2" / "000.p" / "1").is_file()
    assert (tmp_path / "t" / "tile" / "1" / "000").stat().st_size == 8192
    assert read_tiles(tmp_path / "t", _pub())[0] == len(records)


def test_re_export_after_appends_only_adds_files(tmp_path: Path) -> None:
    records = _records(700)
    out = tmp_path / "tiles"
    before: dict[str, bytes] = {}
    for size in (1, 255, 256, 300, 513, 700):
        done = export_tiles(out, records[:size], _checkpoint(records[:size]))
        files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        for name, data in before.items():
            assert name == "checkpoint" or files[name] == data  # nothing changed or vanished
        assert read_tiles(out, _pub(), exact=False)[0] == size  # the newest checkpoint names only valid tiles
        assert done.kept == len([n for n in before if n in _expected_names(size) and n != "checkpoint"])
        before = files
    # a second export of the same tree writes only the checkpoint again
    assert export_tiles(out, records, _checkpoint(records)).written == 1


def test_another_history_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    records = _records(300)
    out = tmp_path / "tiles"
    export_tiles(out, records[:200], _checkpoint(records[:200]))
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    forked = records[:100] + [b"forged"] + records[101:]
    with pytest.raises(AuditError) as caught:
        export_tiles(out, forked, _checkpoint(forked))
    assert caught.value.rule_id == "audit.tiles-mismatch"
    with pytest.raises(AuditError):  # a shorter log than the one exported
        export_tiles(out, records[:150], _checkpoint(records[:150]))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    (out / "tile" / "0" / "000").write_bytes(b"\0" * 8192)  # an edited tile in place
    with pytest.raises(AuditError) as caught:
        export_tiles(out, records, _checkpoint(records))
    assert caught.value.rule_id == "audit.tiles-mismatch"


def test_folders_in_the_way_are_refused(tmp_path: Path) -> None:
    records = _records(3)
    note = _checkpoint(records)
    (tmp_path / "file").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for target in (tmp_path / "file", tmp_path / "busy"):
        with pytest.raises(InputError) as caught:
            export_tiles(target, records, note)
        assert caught.value.rule_id == "input.tiles-dir"
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    # an attacker's symlink inside an earlier export would redirect the next write
    out = tmp_path / "tiles"
    export_tiles(out, records[:1], _checkpoint(records[:1]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "tile" / "entries").rename(tmp_path / "moved")
    (out / "tile" / "entries").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InputError) as caught:
        export_tiles(out, records, note)
    assert caught.value.rule_id == "input.tiles-dir" and not any(elsewhere.iterdir())


def test_an_empty_folder_is_filled_and_no_temporary_is_left(tmp_path: Path) -> None:
    records = _records(10)
    (tmp_path / "tiles").mkdir()
    export_tiles(tmp_path / "tiles", records, _checkpoint(records))
    assert read_tiles(tmp_path / "tiles", _pub())[0] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]


def test_a_record_too_long_for_a_uint16_prefix_or_a_wrong_checkpoint_is_refused(tmp_path: Path) -> None:
    records = [b"a", b"b" * 65536]
    with pytest.raises(InputError) as caught:
        export_tiles(tmp_path / "t", records, _checkpoint(records))
    assert caught.value.rule_id == "audit.tiles-entry" and not (tmp_path / "t").exists()
    with pytest.raises(InputError):
        export_tiles(tmp_path / "t", _records(3), _checkpoint(_records(4)))
    assert not (tmp_path / "t").exists()


def test_tile_index_paths_follow_the_spec_example() -> None:
    from runner.audit.tiles import index_path

    for index in (0, 7, 999, 1000, 1234067, 10**9 + 5):
        assert index_path(index) == _n(index)
    assert index_path(1234067) == "x001/x234/067" and index_path(5) == "005"
