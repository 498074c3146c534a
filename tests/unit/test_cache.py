"""The compiled-module cache: memory LRU, private disk folder, and entries never loaded blindly.

Every test gets its own cache secret (``$SANDRUN_CACHE_KEY`` in a temporary folder), so the suite
never reads or creates the user's real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import make_job
from wasmtime import Engine, Module, wat2wasm

from runner.cache import (
    CACHE_FORMAT,
    MAX_BYTES_ENV,
    ModuleCache,
    _entry_mac,
    check_private_dir,
    default_cache_dir,
)
from runner.cache_secret import SECRET_ENV, load_secret
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


@pytest.fixture(autouse=True)
def secret_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state" / "sandrun" / "cache.key"
    monkeypatch.setenv(SECRET_ENV, str(path))
    return path


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


def damage_authenticated_garbage(artifact: Path, sidecar: Path) -> None:
    """Bytes with a valid MAC (made with this user's own secret) that are not a Wasmtime artifact."""
    garbage = b"\x7fELF" + b"\x00" * 200
    artifact.write_bytes(garbage)
    meta = json.loads(sidecar.read_text())
    secret = load_secret(Path(os.environ[SECRET_ENV]))
    mac = _entry_mac(secret, meta["key"], len(garbage), [memoryview(garbage)])
    sidecar.write_text(json.dumps({**meta, "size": len(garbage), "mac": mac}))


def damage_v1_sidecar(artifact: Path, sidecar: Path) -> None:
    """The previous format: consistent sha256, no MAC."""
    meta = json.loads(sidecar.read_text())
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    sidecar.write_text(
        json.dumps(
            {"format": "sandrun-module-cache/v1", "key": meta["key"], "size": meta["size"], "sha256": digest}
        )
    )


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
        damage_authenticated_garbage,
        damage_v1_sidecar,
    ],
)
def test_bad_entries_are_recompiled_and_rewritten(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes, damage: object
) -> None:
    job = make_job(tmp_path, probe_wasm)
    assert fresh_load(cache_dir, job, tmp_path) == "compiled"
    damage(*entries(cache_dir))  # type: ignore[operator]
    assert fresh_load(cache_dir, job, tmp_path) == "recompiled"
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
    assert fresh_load(cache_dir, probe, tmp_path) == "recompiled"


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


# --- entries are authenticated with the user's secret --------------------------------------------


def _exports(module: object) -> set[str]:
    return {export.name for export in module.exports}  # type: ignore[attr-defined]


def _digest_of(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


def test_consistent_pair_from_another_secret_for_the_approved_digest_is_recompiled_not_run(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes
) -> None:
    """A cache restored by CI: entry for digest A holding B's code, made consistent by its writer."""
    engine = Engine()
    attacker_dir = tmp_path / "attacker" / "modules"
    attacker = ModuleCache(attacker_dir, secret_path=tmp_path / "attacker" / "cache.key")
    ours = ModuleCache(cache_dir)
    key_a = ours.key(_digest_of(probe_wasm), "plain")
    module, source = attacker.load(engine, key_a, lambda: OTHER)  # B compiled under A's key
    assert source == "compiled" and _exports(module) == {"_start"}
    cache_dir.mkdir(parents=True, exist_ok=True)
    for path in attacker_dir.iterdir():  # the "restore": a complete, self-consistent pair
        os.replace(path, cache_dir / path.name)
    module, source = ours.load(engine, key_a, lambda: probe_wasm)
    assert source == "recompiled"
    assert _exports(module) == _exports(Module(engine, probe_wasm)) != {"_start"}
    module, source = ModuleCache(cache_dir).load(engine, key_a, lambda: b"never read")
    assert source == "disk" and _exports(module) == _exports(Module(engine, probe_wasm))


def test_entry_written_with_another_secret_is_recompiled_then_rewritten(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes
) -> None:
    engine = Engine()
    other = ModuleCache(cache_dir, secret_path=tmp_path / "other" / "cache.key")
    key = other.key(_digest_of(probe_wasm), "plain")
    assert other.load(engine, key, lambda: probe_wasm)[1] == "compiled"
    assert ModuleCache(cache_dir).load(engine, key, lambda: probe_wasm)[1] == "recompiled"
    assert ModuleCache(cache_dir).load(engine, key, lambda: probe_wasm)[1] == "disk"


def test_swapped_mac_of_another_entry_is_refused(tmp_path: Path, cache_dir: Path, probe_wasm: bytes) -> None:
    """Both entries are ours and valid; B's bytes and sidecar fields under A's name do not verify."""
    engine = Engine()
    cache = ModuleCache(cache_dir)
    key_a, key_b = cache.key(_digest_of(probe_wasm), "plain"), cache.key(_digest_of(OTHER), "plain")
    cache.load(engine, key_a, lambda: probe_wasm)
    cache.load(engine, key_b, lambda: OTHER)
    (artifact_a, sidecar_a), (artifact_b, sidecar_b) = cache._paths(key_a), cache._paths(key_b)
    meta_b = json.loads(sidecar_b.read_text())
    os.replace(artifact_b, artifact_a)
    sidecar_a.write_text(json.dumps({**meta_b, "key": key_a}))  # claims A, carries B's size and MAC
    module, source = ModuleCache(cache_dir).load(engine, key_a, lambda: probe_wasm)
    assert source == "recompiled" and _exports(module) != {"_start"}


def test_secret_is_created_0600_in_a_0700_folder(secret_path: Path, cache_dir: Path) -> None:
    cache = ModuleCache(cache_dir)
    assert cache.disk_problem is None
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_path.parent.stat().st_mode) == 0o700
    text = secret_path.read_text()
    assert len(text) == 65 and text.endswith("\n") and int(text, 16) >= 0
    assert not secret_path.is_relative_to(cache_dir)
    assert load_secret(secret_path) == load_secret(secret_path)  # read again, not replaced


def _refused_secret(cache_dir: Path, probe_wasm: bytes) -> str:
    cache = ModuleCache(cache_dir)
    assert cache.disk_problem is not None
    engine = Engine()
    key = cache.key(_digest_of(probe_wasm), "plain")
    assert cache.load(engine, key, lambda: probe_wasm)[1] == "compiled"
    assert list(cache_dir.iterdir()) == []  # nothing written without a usable secret
    return cache.disk_problem


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_secret_readable_by_others_is_refused_not_replaced(
    secret_path: Path, cache_dir: Path, probe_wasm: bytes, mode: int
) -> None:
    load_secret(secret_path)
    before = secret_path.read_bytes()
    secret_path.chmod(mode)
    assert "group or others" in _refused_secret(cache_dir, probe_wasm)
    assert secret_path.read_bytes() == before and stat.S_IMODE(secret_path.stat().st_mode) == mode


def test_symlinked_or_malformed_secret_is_refused(
    tmp_path: Path, secret_path: Path, cache_dir: Path, probe_wasm: bytes
) -> None:
    elsewhere = tmp_path / "elsewhere.key"
    elsewhere.write_text("ab" * 32 + "\n")
    elsewhere.chmod(0o600)
    secret_path.parent.mkdir(parents=True, mode=0o700)
    secret_path.symlink_to(elsewhere)
    assert "cannot open" in _refused_secret(cache_dir, probe_wasm)
    secret_path.unlink()
    secret_path.write_text("AB" * 32 + "\n")
    secret_path.chmod(0o600)
    assert "64 lowercase hex" in _refused_secret(cache_dir, probe_wasm)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the key file to someone else")
def test_secret_owned_by_someone_else_is_refused(
    secret_path: Path, cache_dir: Path, probe_wasm: bytes
) -> None:
    load_secret(secret_path)
    os.chown(secret_path, 65534, 65534)
    assert "not owned" in _refused_secret(cache_dir, probe_wasm)


def test_processes_of_one_user_share_the_secret_and_each_others_entries(
    secret_path: Path, cache_dir: Path, probe_wasm: bytes
) -> None:
    """Several runners create the secret at once; an entry one process writes, another loads."""
    code = (
        "import sys; from pathlib import Path; from wasmtime import Engine\n"
        "from runner.cache import ModuleCache\n"
        "cache = ModuleCache(Path(sys.argv[1]))\n"
        "wasm = Path(sys.argv[2]).read_bytes()\n"
        "import hashlib; key = cache.key(hashlib.sha256(wasm).hexdigest(), 'plain')\n"
        "print(cache._secret.key_id, cache.load(Engine(), key, lambda: wasm)[1])\n"
    )
    module = cache_dir.parent / "probe.wasm"
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_bytes(probe_wasm)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(cache_dir), str(module)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=120)[0].split() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert len({key_id for key_id, _ in outputs}) == 1
    assert {source for _, source in outputs} <= {"compiled", "disk"}
    assert list(secret_path.parent.iterdir()) == [secret_path]  # no temporary file left behind
    here = ModuleCache(cache_dir)
    assert here._secret is not None and here._secret.key_id == outputs[0][0]
    key = here.key(_digest_of(probe_wasm), "plain")
    assert here.load(Engine(), key, lambda: b"never read")[1] == "disk"


def test_checking_a_large_entry_keeps_no_copy_of_it(tmp_path: Path, secret_path: Path) -> None:
    """The MAC (keyed BLAKE3 over the header, then the bytes) is computed over the sealed copy,
    mapped: never a copy of the file in Python."""
    import tracemalloc

    from blake3 import blake3

    from runner.sealed import seal_copy

    size = 48 << 20
    path = tmp_path / "big.cwasm"
    data = os.urandom(size)
    path.write_bytes(data)
    secret = load_secret(secret_path)
    expected = _entry_mac(secret, "k", size, [memoryview(data)])
    header = json.dumps([CACHE_FORMAT, secret.key_id, "k", size]).encode() + b"\n"
    assert expected == blake3(header + data, key=secret.key).hexdigest()
    del data
    fd = os.open(path, os.O_RDONLY)
    try:
        tracemalloc.start()
        sealed = seal_copy(fd, size)
        with sealed.view() as view:
            checked = _entry_mac(secret, "k", size, [view])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        os.close(fd)
    assert checked == expected
    assert peak < 4 << 20  # not the 48 MiB


def test_disk_cache_evicts_the_least_recently_used_entries(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes
) -> None:
    engine = Engine()
    third = bytes(wat2wasm('(module (func (export "_start") nop))'))
    cache = ModuleCache(cache_dir)
    keys = {name: cache.key(_digest_of(wasm), "plain") for name, wasm in (("a", probe_wasm), ("b", OTHER))}
    cache.load(engine, keys["a"], lambda: probe_wasm)
    cache.load(engine, keys["b"], lambda: OTHER)
    artifacts = {name: cache._paths(key)[0] for name, key in keys.items()}
    os.utime(artifacts["a"], (1000, 1000))  # a older than b...
    os.utime(artifacts["b"], (2000, 2000))
    sizes = {name: path.stat().st_size for name, path in artifacts.items()}
    fresh = ModuleCache(cache_dir, max_disk_bytes=sizes["a"] + sizes["b"] + 1)
    assert fresh.load(engine, keys["a"], lambda: probe_wasm)[1] == "disk"  # ...until a is used
    assert fresh.load(engine, fresh.key(_digest_of(third), "plain"), lambda: third)[1] == "compiled"
    assert artifacts["a"].exists() and not artifacts["b"].exists()
    assert not artifacts["b"].with_suffix(".json").exists()
    assert sum(p.stat().st_size for p in cache_dir.glob("*.cwasm")) <= fresh.max_disk_bytes


def test_cache_size_cap_from_the_environment(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.setenv(MAX_BYTES_ENV, "64MiB")
    assert ModuleCache(cache_dir).max_disk_bytes == 64 << 20
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    problem = ModuleCache(cache_dir).disk_problem
    assert problem is not None and MAX_BYTES_ENV in problem


def test_secret_inside_the_cache_folder_is_refused(cache_dir: Path, probe_wasm: bytes) -> None:
    """A restored cache would bring its own key with it."""
    cache = ModuleCache(cache_dir, secret_path=cache_dir / "keys" / "cache.key")
    assert cache.disk_problem is not None and "inside the cache folder" in cache.disk_problem
    assert not (cache_dir / "keys").exists()


def test_a_component_is_cached_under_its_own_key_and_checked_like_a_module(
    tmp_path: Path, cache_dir: Path, probe_component: bytes
) -> None:
    job = make_job(tmp_path, probe_component)
    assert job.kind == "component"
    assert fresh_load(cache_dir, job, tmp_path) == "compiled"
    assert fresh_load(cache_dir, job, tmp_path) == "disk"  # deserialized as a Component
    artifact, sidecar = entries(cache_dir)
    assert json.loads(sidecar.read_text())["key"].startswith(job.module_sha256 + "|component|")
    damage_flip(artifact, sidecar)
    assert fresh_load(cache_dir, job, tmp_path) == "recompiled"


def test_an_entry_larger_than_the_cache_could_hold_is_never_copied_into_memory(
    tmp_path: Path, cache_dir: Path, probe_wasm: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can write the folder (a restored CI cache) plants a sparse giant under an approved
    key, its sidecar copied from a real entry with the size changed (the secret's id is no secret):
    the entry is copied into a sealed memfd before its MAC is checked, so a 100 GB hole would
    fill the machine's memory. Larger than the cap, it is refused unread and recompiled."""
    import runner.cache as cache_module

    engine = Engine()
    key = ModuleCache(cache_dir).key(_digest_of(probe_wasm), "plain")
    ModuleCache(cache_dir).load(engine, key, lambda: probe_wasm)
    artifact, sidecar = ModuleCache(cache_dir)._paths(key)
    giant = 256 << 20
    with artifact.open("r+b") as stream:
        stream.truncate(giant)  # a hole: no disk used
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "size": giant}))
    copied: list[int] = []
    real_copy = cache_module.seal_copy

    def spy(fd: int, size: int) -> object:
        copied.append(size)
        return real_copy(fd, size)

    monkeypatch.setattr(cache_module, "seal_copy", spy)
    capped = ModuleCache(cache_dir, max_disk_bytes=64 << 20)
    assert capped.load(engine, key, lambda: probe_wasm)[1] == "recompiled"
    assert copied == []


def test_eviction_deletes_nothing_once_the_folder_was_swapped_for_a_link(
    tmp_path: Path, probe_wasm: bytes
) -> None:
    """The cache folder was checked when the cache opened; someone who may write a folder above it
    (a shared ``$XDG_CACHE_HOME`` on a self-hosted runner) then renames it away and puts a link to
    the user's files in its place: the next eviction must not delete ``*.cwasm``/``*.json`` there."""
    shared = tmp_path / "shared"
    cache_dir = shared / "sandrun" / "modules"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "build.json").write_text("the user's\n")
    with (victim / "build.cwasm").open("wb") as stream:
        stream.truncate(5 << 20)  # over the cap on its own: first in line for eviction
    os.utime(victim / "build.cwasm", (1000, 1000))
    cache = ModuleCache(cache_dir, max_disk_bytes=4 << 20)
    assert cache.disk_problem is None
    (shared / "sandrun").rename(shared / "checked")
    (shared / "sandrun").mkdir()
    (shared / "sandrun" / "modules").symlink_to(victim)
    cache.load(Engine(), cache.key(_digest_of(probe_wasm), "plain"), lambda: probe_wasm)
    assert (victim / "build.json").read_text() == "the user's\n"
    assert (victim / "build.cwasm").stat().st_size == 5 << 20
    assert sorted(p.name for p in victim.iterdir()) == ["build.cwasm", "build.json"]  # nothing written
