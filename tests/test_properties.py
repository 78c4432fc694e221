"""Property-based tests: parsing never crashes, and an incremental index always equals a fresh one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import orjson
from helpers_index import files, samples
from helpers_samples import SampleFiles
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.ingest import change, walk
from indexer.ingest.index import index_root
from indexer.ingest.read import parse_dimension, parse_json_bytes
from indexer.ingest.walk import split_sample_path


@given(st.binary(max_size=300))
def test_parse_json_bytes_never_raises(data):
    obj, error = parse_json_bytes(data)
    assert (obj is None) != (error is None)
    if obj is not None:
        assert isinstance(obj, dict)


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.integers(-2**62, 2**62),
                                                         st.text(max_size=30), st.booleans())))
def test_parse_json_bytes_round_trips_objects(obj):
    for data in (orjson.dumps(obj), json.dumps(obj, indent=2).encode(), b"\xef\xbb\xbf" + orjson.dumps(obj)):
        assert parse_json_bytes(data) == (obj, None)


@given(st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=12), st.booleans(),
                 st.none(), st.lists(st.integers(), max_size=2)))
def test_parse_dimension_only_positive_integers(value):
    result = parse_dimension(value)
    assert result is None or (isinstance(result, int) and result > 0)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 20:
        assert result == value
    if isinstance(value, str) and result is not None:
        assert int(value.strip()) == result


@given(st.integers(1, 1 << 20))
def test_parse_dimension_numeric_strings(number):
    assert parse_dimension(str(number)) == number
    assert parse_dimension(f" {number}\n") == number
    assert parse_dimension(float(number)) == number


@given(st.text(alphabet="ab/._-JSONPNGjsonpng", max_size=20))
def test_split_sample_path(path):
    parts = split_sample_path(path)
    if parts is not None:
        key, ext = parts
        assert path == f"{key}.{path[len(key) + 1:]}"
        assert ext in walk.SAMPLE_EXTENSIONS and ext == path.rsplit(".", 1)[1].lower()
        assert not key.endswith("/") and key != ""


KEYS = st.sampled_from(["a", "b", "c", "sub/d", "sub/e"])
OPS = st.lists(
    st.tuples(st.sampled_from(["write_pair", "write_json", "write_image", "delete_json",
                               "delete_image", "corrupt", "rename"]), KEYS, KEYS, st.integers(0, 3)),
    min_size=1, max_size=8,
)


def _apply(root: Path, op: str, key: str, other: str, n: int, sample_files: SampleFiles) -> None:
    json_path, image_path = root / f"{key}.json", root / f"{key}.png"
    if op == "write_pair":
        sample_files.pair(root, key, record={"short_caption": f"v{n}", "width": 64 + n, "height": 64})
    elif op == "write_json":
        sample_files.pair(root, key, record={"short_caption": f"j{n}"}, image=False)
    elif op == "write_image":
        sample_files.pair(root, key, json_file=False, size=(16 + n, 16))
    elif op == "delete_json":
        json_path.unlink(missing_ok=True)
    elif op == "delete_image":
        image_path.unlink(missing_ok=True)
    elif op == "corrupt":
        sample_files.pair(root, key, json_text='{"short', image=False)
    elif op == "rename" and key != other:
        for suffix in (".json", ".png"):
            source = root / f"{key}{suffix}"
            if source.exists():
                (root / f"{other}{suffix}").parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, root / f"{other}{suffix}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(OPS, min_size=1, max_size=3))
def test_incremental_index_equals_fresh_index(sample_files, monkeypatch, rounds):
    """Whatever happens to the files between runs, the updated index equals a fresh index."""
    monkeypatch.setattr(change, "RACY_WINDOW_NS", 0)
    work = Path(tempfile.mkdtemp())
    try:
        root = work / "data"
        root.mkdir()
        for ops in rounds:
            for op in ops:
                _apply(root, *op, sample_files)
            kept = index_root(work / "incremental.sqlite", root, workers=1)["json_bytes"]
            fresh = work / "fresh.sqlite"
            index_root(fresh, root, workers=1)
            assert samples(work / "incremental.sqlite") == samples(fresh)
            assert files(work / "incremental.sqlite") == files(fresh)
            assert kept == sum(path.stat().st_size for path in root.rglob("*.json"))
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{fresh}{suffix}").unlink(missing_ok=True)
    finally:
        shutil.rmtree(work)
