"""The wasmtime version in every cache key, read without importing ``importlib.metadata``."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import wasmtime

from runner.cache import wasmtime_version


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    wasmtime_version.cache_clear()
    yield
    wasmtime_version.cache_clear()


def _site(tmp_path: Path, *dist_infos: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "wasmtime").mkdir(parents=True)
    for name in dist_infos:
        (tmp_path / name).mkdir()
    monkeypatch.setattr(wasmtime, "__file__", str(tmp_path / "wasmtime" / "__init__.py"))


def test_it_is_the_installed_distributions_version() -> None:
    assert wasmtime_version() == version("wasmtime")


def test_it_is_read_from_the_dist_info_beside_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _site(tmp_path, "wasmtime-99.0.1.dist-info", "wasmtime_other-1.0.dist-info", monkeypatch=monkeypatch)
    assert wasmtime_version() == "99.0.1"


def test_an_ambiguous_or_missing_dist_info_asks_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _site(tmp_path, "wasmtime-1.0.dist-info", "wasmtime-2.0.dist-info", monkeypatch=monkeypatch)
    assert wasmtime_version() == version("wasmtime")
    wasmtime_version.cache_clear()
    _site(tmp_path / "empty", monkeypatch=monkeypatch)
    assert wasmtime_version() == version("wasmtime")
