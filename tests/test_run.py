"""The one run lifecycle (ingest/run.py): what a writer's `runs` row says however the run ends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from indexer.errors import IndexerError
from indexer.ingest import index
from indexer.ingest.run import writer_run


def last_run(db: Path) -> tuple:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT command, status, error, added, finished_at IS NOT NULL FROM runs"
                            " ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()


@pytest.mark.parametrize(("raised", "status", "error"), [
    (IndexerError("ROOT vanished"), "failed", "ROOT vanished"),
    (RuntimeError(), "failed", "failed"),
    (KeyboardInterrupt(), "interrupted", "interrupted"),
])
def test_an_index_that_raises_is_recorded_and_the_exception_goes_on(data_root, db_path, monkeypatch,
                                                                    raised, status, error):
    def update_dataset(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr(index, "update_dataset", update_dataset)
    with pytest.raises(type(raised)):
        index.index_root(db_path, data_root)
    assert last_run(db_path) == ("index", status, error, None, 1)


def test_a_run_records_what_it_finished_with(data_root, db_path):
    with writer_run(db_path, data_root, "extract") as run:
        run.finish({"added": 3, "problems": {}}, status="failed", error="1 shard(s) failed")
    assert last_run(db_path) == ("extract", "failed", "1 shard(s) failed", 3, 1)


def test_a_watch_failure_keeps_its_totals_and_names_a_silent_exception(data_root, db_path):
    with pytest.raises(RuntimeError), writer_run(db_path, data_root, "watch") as run:
        run.so_far, run.name_silent_failures = (lambda: {"added": 7}), True
        raise RuntimeError
    assert last_run(db_path) == ("watch", "failed", "RuntimeError", 7, 1)
