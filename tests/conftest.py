"""Shared fixtures: the sample generator from scripts/ and the one writer of samples built on it, a
CLI runner, a temp dataset and database."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner
from helpers_samples import SampleFiles

from indexer.ingest import change

ROOT = Path(__file__).resolve().parent.parent


def _load_make_sample() -> ModuleType:
    """scripts/make_sample.py, the image and dataset generator (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "scripts" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["make_sample"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="session")
def gen() -> ModuleType:
    """The sample generator module (png_bytes, jpeg_bytes, webp_bytes, sample_json, make_dataset)."""
    return _load_make_sample()


@pytest.fixture(scope="session")
def sample_files(gen: ModuleType) -> SampleFiles:
    """Writes samples: .pair(root, key, ...) a loose pair, .json(root, key, text) raw JSON,
    .members(key, ...) a pair's bytes for a shard, .shard(path, members) a tar, .image(ext, size)."""
    return SampleFiles(gen)


@pytest.fixture
def new_folder(tmp_path: Path) -> Callable[[str], Path]:
    """new_folder(name): a new, empty folder of that name in the test's tmp_path."""

    def make(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        return folder

    return make


@pytest.fixture
def data_root(new_folder: Callable[[str], Path]) -> Path:
    return new_folder("data")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "index.sqlite"


@pytest.fixture
def cli():
    """Invoke the CLI in-process: cli(*args) -> click Result (stdout and stderr kept apart)."""
    from indexer.cli import main

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def no_racy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test before a scan count as settled (the real racy window is 3 s)."""
    monkeypatch.setattr(change, "RACY_WINDOW_NS", 0)
