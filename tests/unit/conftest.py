"""Shared helpers for unit tests: build JobSpecs directly, run them in a private Runtime."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.plan import JobSpec, Limits, Mount
from runner.wasmfile import wasm_kind

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.append(str(FIXTURES.parent / "cli"))  # cli_process: the CLI and its worker processes

DEFAULT_LIMITS = {
    "fuel": None,
    "memory": 64 << 20,
    "timeout_ms": 10_000,
    "stack": 512 << 10,
    "output": 1 << 20,
}


def make_job(
    root: Path,
    wasm: bytes,
    *,
    args: tuple[str, ...] = (),
    mounts: tuple[tuple[str, str, str], ...] = (),
    env: tuple[tuple[str, str], ...] = (),
    stdin: str | None = None,
    invoke: str | None = None,
    name: str = "job",
    **limits: Any,
) -> JobSpec:
    """Write ``wasm`` under ``root`` and describe a job that runs it."""
    digest = hashlib.sha256(wasm).hexdigest()
    module = root / "modules" / f"{digest}.wasm"
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_bytes(wasm)
    return JobSpec(
        id=f"tests/{name}",
        manifest="tests",
        name=name,
        tool="tool",
        module=module.relative_to(root).as_posix(),
        module_sha256=digest,
        args=tuple(args),
        program_name="tool",
        invoke=invoke,
        env=tuple(env),
        stdin=stdin,
        mounts=tuple(Mount(host=h, guest=g, mode=m) for h, g, m in mounts),  # type: ignore[arg-type]
        network=None,
        limits=Limits(**{**DEFAULT_LIMITS, **limits}),
        needs=(),
        expect_exit_code=0,
        actions=(),
        score="0",
        kind=wasm_kind(wasm) or "module",
    )


@pytest.fixture(scope="session")
def probe_wasm() -> bytes:
    return (FIXTURES / "probe.wasm").read_bytes()


@pytest.fixture(scope="session")
def probe_component() -> bytes:
    """The same probe as a WASI preview-2 component (scripts/build-components.sh)."""
    return (FIXTURES / "components" / "probe.wasm").read_bytes()


@pytest.fixture
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from runner.sandbox import Runtime

    with Runtime(cache_dir=tmp_path_factory.mktemp("cache")) as rt:
        yield rt
