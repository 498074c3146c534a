"""The compiled-module cache: memory LRU, private disk folder, and entries never loaded blindly."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from conftest import make_job
from wasmtime import wat2wasm

from runner.cache import CACHE_FORMAT, ModuleCache, _digest, check_private_dir, default_cache_dir
from runner.plan import JobSpec
from runner.sandbox import Runtime

OTHER = bytes(wat2wasm('(module (func (export "_start")))'))


def fresh_load(cache_dir: Path, job: JobSpec, root: Path) -> str:
    """Load through a new Runtime (empty memory cache), then check the module really runs."""
    with Runtime(cache_dir=cache_dir) as runtime:
        source = runtime.load_module(job, root)
        assert runtime.run(job, root).exit_code == 0
        return source


def entries(cache_dir: Path) -> tuple[Path, Path]:
    [artifact] = cache_dir.glob("*.cwasm")
    return artifact, artifact.with_suffix(".json")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "modules"


def test_second_run_loads_from_disk(tmp_path: Path, cache_dir: Path, probe_wasm: bytes) -> None:
    job = make_job(tmp_path, probe_wasm)
    assert fresh_load(cache_dir, job, tmp_path) == "compiled"
    assert fresh_load(cache_dir, job, tmp_path) == "disk"
    assert (cache_dir.stat().st_mode & 0o777) == 0o700
    artifact, sidecar = entries(cache_dir)
    assert (artifact.stat().st_mode & 0o777) == 0o600
    meta = json.loads(sidecar.read_text())
    assert meta["format"] == CACHE_FORMAT
    assert meta["key"].startswith(job.module_sha256 + "|")
    assert meta["size"] == artifact.stat().st_size


def damage_flip(artifact: Path, sidecar: Path) -> None:
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))


def damage_truncate(artifact: Path, sidecar: Path) -> None:
    artifact.write_bytes(artifact.read_bytes()[:100])


def damage_foreign_key(artifact: Path, sidecar: Path) -> None:
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "key": meta["key"].replace("wasmtime-", "wasmtime-0.")}))


def damage_garbage_sidecar(artifact: Path, sidecar: Path) -> None:
    sidecar.write_text("{not json")


def damage_missing_sidecar(artifact: Path, sidecar: Path) -> None:
    sidecar.unlink()


def damage_symlinked_artifact(artifact: Path, sidecar: Path) -> None:
    real = artifact.with_name("elsewhere")
    artifact.rename(real)
    artifact.symlink_to(real)


def damage_group_writable(artifact: Path, sidecar: Path) -> None:
    artifact.chmod(0o664)


def damage_consistent_garbage(artifact: Path, sidecar: Path) -> None:
    """Bytes that pass the integrity check but are not a Wasmtime artifact: Wasmtime refuses."""
    garbage = b"\x7fELF" + b"\x00" * 200
    artifact.write_bytes(garbage)
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "size": len(garbage), "sha256": _digest(memoryview(garbage))}))


@pytest.mark.parametrize(
    "damage",
    [
        damage_flip,
        damage_truncate,
        damage_foreign_key,
        damage_garbage_sidecar,
        damage_missing_sidecar,
        damage_symlinked_artifact,
        damage_group_writable,
        damage_consistent_garbage,
    ],
)
def test_bad_entries_are_recompiled_and_rewritten(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes, damage: object
) -> None:
    job = make_job(tmp_path, probe_wasm)
    assert fresh_load(cache_dir, job, tmp_path) == "compiled"
    damage(*entries(cache_dir))  # type: ignore[operator]
    assert fresh_load(cache_dir, job, tmp_path) == "compiled"
    assert fresh_load(cache_dir, job, tmp_path) == "disk"


def test_entry_of_another_module_under_this_name_is_refused(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes
) -> None:
    probe, other = make_job(tmp_path, probe_wasm), make_job(tmp_path, OTHER)
    fresh_load(cache_dir, other, tmp_path)
    other_artifact, other_sidecar = entries(cache_dir)
    fresh_load(cache_dir, probe, tmp_path)
    [probe_artifact] = [p for p in cache_dir.glob("*.cwasm") if p != other_artifact]
    os.replace(other_artifact, probe_artifact)
    os.replace(other_sidecar, probe_artifact.with_suffix(".json"))
    assert fresh_load(cache_dir, probe, tmp_path) == "compiled"


@pytest.mark.parametrize("mode", [0o770, 0o755, 0o701])
def test_folder_accessible_to_others_is_not_used(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes, mode: int
) -> None:
    job = make_job(tmp_path, probe_wasm)
    fresh_load(cache_dir, job, tmp_path)
    cache_dir.chmod(mode)
    with Runtime(cache_dir=cache_dir) as runtime:
        assert runtime.cache.disk_problem is not None and "group or others" in runtime.cache.disk_problem
        assert runtime.load_module(job, tmp_path) == "compiled"


def test_symlinked_folder_is_not_used(tmp_path: Path, probe_wasm: bytes) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    assert check_private_dir(tmp_path / "link") is not None
    assert check_private_dir(real) is None


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the folder to someone else")
def test_folder_owned_by_someone_else_is_not_used(tmp_path: Path, cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, mode=0o700)
    os.chown(cache_dir, 65534, 65534)
    problem = check_private_dir(cache_dir)
    assert problem is not None and "not owned" in problem


def test_default_folder_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "sandrun" / "modules"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "sandrun" / "modules"


def test_engine_configurations_get_separate_entries(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes
) -> None:
    plain, fueled = make_job(tmp_path, probe_wasm), make_job(tmp_path, probe_wasm, fuel=10**9)
    assert fresh_load(cache_dir, plain, tmp_path) == "compiled"
    assert fresh_load(cache_dir, fueled, tmp_path) == "compiled"
    assert fresh_load(cache_dir, fueled, tmp_path) == "disk"
    assert len(list(cache_dir.glob("*.cwasm"))) == 2


def test_memory_lru_evicts_the_least_recently_used(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes
) -> None:
    a, b = make_job(tmp_path, probe_wasm), make_job(tmp_path, OTHER)
    with Runtime(cache_dir=cache_dir, memory_cache_entries=1) as runtime:
        assert runtime.load_module(a, tmp_path) == "compiled"
        assert runtime.load_module(a, tmp_path) == "memory"
        assert runtime.load_module(b, tmp_path) == "compiled"
        assert runtime.load_module(a, tmp_path) == "disk"


def test_concurrent_loads_compile_once(tmp_path: Path, cache_dir: Path, probe_wasm: bytes) -> None:
    job = make_job(tmp_path, probe_wasm)
    sources: list[str] = []
    with Runtime(cache_dir=cache_dir) as runtime:
        threads = [
            threading.Thread(target=lambda: sources.append(runtime.load_module(job, tmp_path)))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(sources) == ["compiled", "memory", "memory", "memory"]


def test_cache_without_folder_only_compiles(probe_wasm: bytes) -> None:
    from wasmtime import Engine

    cache = ModuleCache(None)
    assert cache.disk_problem == "no cache folder"
    engine = Engine()
    key = cache.key("0" * 64, "test")
    assert cache.load(engine, key, lambda: probe_wasm)[1] == "compiled"
    assert cache.load(engine, key, lambda: probe_wasm)[1] == "memory"


def test_digest_is_over_chunk_digests() -> None:
    data = os.urandom(20 << 20)  # three 8 MiB chunks, hashed in parallel
    chunks = [data[i : i + (8 << 20)] for i in range(0, len(data), 8 << 20)]
    expected = hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in chunks)).hexdigest()
    assert _digest(memoryview(data)) == expected
    flipped = bytearray(data)
    flipped[-1] ^= 1
    assert _digest(memoryview(flipped)) != expected
