"""Writers beside readers and exporters: no writer ever fails, and no export is taken as current
when the data moved after it was read."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from indexer import store
from indexer.export.jsonl import export_jsonl
from indexer.export.parquet import export_parquet
from indexer.ingest import pipeline, recorder
from indexer.ingest.index import index_root


def _ok_count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM samples WHERE status = 'ok'").fetchone()[0]
    finally:
        conn.close()


# The two places a batch commits: a first run's copy from a reader's scratch database, and
# every later run's merge of read results.
BATCH_WRITERS = ((recorder.Recorder, "record_scratch"), (pipeline, "write_results"))


def _after_each_batch(monkeypatch, then) -> None:
    """Call `then()` right after each batch the write path commits."""
    for module, name in BATCH_WRITERS:
        original = getattr(module, name)

        def write_then(*args, _original=original, **kwargs):
            result = _original(*args, **kwargs)
            then()
            return result

        monkeypatch.setattr(module, name, write_then)


def _export_after_batch(monkeypatch, export) -> list[dict]:
    """Run `export` from its own connections right after each of the first batches commits."""
    summaries: list[dict] = []
    _after_each_batch(monkeypatch, lambda: len(summaries) < 3 and summaries.append(export()))
    return summaries


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_export_between_batches_neither_breaks_the_index_nor_stays_current(
        tmp_path, gen, no_racy, monkeypatch, kind):
    root = tmp_path / "data"
    gen.make_dataset(root, 600, faults=0.0, seed=3)
    db = tmp_path / "db.sqlite"
    out = tmp_path / f"out.{kind}"
    export = export_parquet if kind == "parquet" else export_jsonl
    summaries = _export_after_batch(monkeypatch, lambda: export(db, out))

    # Each export commits its bookkeeping between two of the index's write transactions.
    summary = index_root(db, root, workers=1, keys_per_commit=100)

    assert summary["added"] == 600
    assert len(summaries) == 3 and summaries[0]["rows"] < 600
    monkeypatch.undo()
    again = export(db, out)
    assert not again["up_to_date"]  # the data moved after every mid-run export
    assert again["rows"] == _ok_count(db) == 600
    assert export(db, out)["up_to_date"]


def test_every_committed_batch_moves_the_data_version(tmp_path, gen, no_racy, monkeypatch):
    root = tmp_path / "data"
    gen.make_dataset(root, 500, faults=0.0, seed=4)
    db = tmp_path / "db.sqlite"
    batches = []
    _after_each_batch(monkeypatch, lambda: batches.append(1))
    index_root(db, root, workers=1, keys_per_commit=100)
    conn = sqlite3.connect(db)
    versions = [row[0] for row in conn.execute(
        "SELECT DISTINCT data_version FROM samples ORDER BY data_version")]
    current = conn.execute("SELECT data_version FROM datasets").fetchone()[0]
    conn.close()
    assert len(batches) > 2 and len(versions) == len(batches) and current == versions[-1]


def test_index_survives_exporters_in_other_processes(tmp_path, gen):
    """The scenario users hit: exports started while a first index runs, in separate processes."""
    root = tmp_path / "data"
    gen.make_dataset(root, 8000, faults=0.02, seed=5)
    db = tmp_path / "db.sqlite"
    code = ("import sys; from indexer.ingest.index import index_root; "
            "index_root(sys.argv[1], sys.argv[2], workers=1, keys_per_commit=200)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(root)], stderr=subprocess.PIPE)
    exports = 0
    try:
        while proc.poll() is None:
            if db.exists():
                result = subprocess.run(
                    [sys.executable, "-m", "indexer", "export", "jsonl", str(tmp_path / "m.jsonl"),
                     "--db", str(db), "--quiet"], capture_output=True, text=True)
                exports += result.returncode == 0
    finally:
        _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert exports >= 1
    assert _ok_count(db) > 7700


def test_a_connection_opened_again_in_the_same_process_keeps_the_first_ones_wal(tmp_path):
    """A watch opens its database again for its exports: the writer must keep its lock on the
    file, or another process closing takes itself for the last user and deletes the WAL the writer
    still commits into (readers would never see those commits)."""
    db = tmp_path / "index.sqlite"
    writer = store.connect(db)
    store.ensure_dataset(writer, "d", tmp_path)
    store.connect(db, readonly=True).close()  # as an export inside the watch process does
    other = subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
                            " c.execute('UPDATE datasets SET data_version = 5'); c.commit(); c.close()",
                            str(db)], check=True)
    assert other.returncode == 0
    with store.transaction(writer):
        writer.execute("UPDATE datasets SET data_version = data_version + 1")
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert reader.execute("SELECT data_version FROM datasets").fetchone() == (6,)
    reader.close()
    writer.close()
