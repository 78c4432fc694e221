"""The stats indexes and the search index a bulk write defers: built by that writing run before it
ends (or by the next one, when it stopped first); the reading commands never build or write them,
answer without them and say why."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from helpers_index import samples

from indexer import store
from indexer.db import lock
from indexer.extract import extract_shards
from indexer.ingest import apply, change, derived, index
from indexer.ingest.index import index_root
from indexer.inspect import search, stats
from indexer.render.html import write_report
from indexer.render.stats import format_stats

pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled


def names(db: Path, kind: str) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = ?", (kind,))}
    finally:
        conn.close()


def structures(db: Path) -> tuple[set[str], set[str]]:
    return names(db, "index"), names(db, "trigger")


def deferred_names(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM deferred_structures")}
    finally:
        conn.close()


def fts_in_sync(db: Path) -> bool:
    conn = sqlite3.connect(db)
    try:
        conn.execute("INSERT INTO samples_fts (samples_fts, rank) VALUES ('integrity-check', 1)")
        return (conn.execute("SELECT count(*) FROM samples_fts_docsize").fetchone()[0]
                == conn.execute("SELECT count(*) FROM samples").fetchone()[0])
    finally:
        conn.close()


def first_word(db: Path) -> str:
    return json.loads(next(iter(samples(db).values()))["meta"])["short_caption"].split()[0]


def test_a_bulk_run_builds_what_it_deferred_before_it_ends(data_root, db_path, gen, monkeypatch):
    store.connect(db_path).close()
    complete = structures(db_path)
    seen = []
    real_build = index.build_derived

    def build(conn: sqlite3.Connection, progress: bool = False) -> int:
        seen.append(deferred_names(db_path))  # what the bulk write had dropped, as its build starts
        return real_build(conn, progress)

    monkeypatch.setattr(index, "build_derived", build)
    monkeypatch.setattr(apply, "BULK_MIN_KEYS", 1)
    gen.make_dataset(data_root, 30, faults=0.0, seed=4)
    summary = index_root(db_path, data_root, workers=1)
    assert len(seen) == 1 and "samples_file_hash" in seen[0] and "samples_fts_insert" in seen[0]
    assert summary["derived"]["built"] == len(seen[0]) and summary["derived"]["seconds"] >= 0
    assert structures(db_path) == complete and not deferred_names(db_path) and fts_in_sync(db_path)
    assert search.search(db_path, first_word(db_path))
    rerun = index_root(db_path, data_root, workers=1)
    assert rerun["derived"]["built"] == 0


def test_a_build_stopped_half_way_is_finished_by_the_next_writing_run(data_root, db_path, gen):
    gen.make_dataset(data_root, 20, faults=0.0, seed=4)
    index_root(db_path, data_root, workers=1)
    complete = structures(db_path)
    conn = store.connect(db_path)
    derived.defer_derived(conn)
    with store.transaction(conn):  # one index built before the kill
        conn.execute(conn.execute(
            "SELECT sql FROM deferred_structures WHERE name = 'samples_file_hash'").fetchone()[0])
        conn.execute("DELETE FROM deferred_structures WHERE name = 'samples_file_hash'")
    left = len(deferred_names(db_path))
    conn.close()
    summary = index_root(db_path, data_root, workers=1)
    assert summary["files_read"] == 0 and summary["derived"]["built"] == left > 0
    assert structures(db_path) == complete and fts_in_sync(db_path)
    check = sqlite3.connect(db_path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


def test_a_first_extract_builds_them_before_it_ends(tmp_path, db_path, sample_files):
    shard = tmp_path / "a.tar"
    members: dict[str, bytes] = {}
    for i in range(5):
        members.update(sample_files.members(f"k{i}", short_caption=f"lantern {i}"))
    sample_files.shard(shard, members)
    extract_shards(db_path, [shard], tmp_path / "out", workers=1)
    assert not deferred_names(db_path) and "samples_file_hash" in names(db_path, "index")
    assert len(search.search(db_path, "lantern")) == 5 and fts_in_sync(db_path)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reading_commands_never_build_or_write_them(data_root, db_path, gen, tmp_path):
    """Without the structures the answers are the same (full scans, a temporary search index);
    the database file and the writer lock's file are left exactly as they were."""
    gen.make_dataset(data_root, 40, faults=0.2, seed=5)
    index_root(db_path, data_root, workers=1)
    word = first_word(db_path)
    expected = stats.dataset_stats(db_path, None)
    expected_hits = search.search_hits(db_path, word, limit=100)
    conn = store.connect(db_path)
    derived.defer_derived(conn)
    conn.close()
    waiting = deferred_names(db_path)
    lock = Path(f"{db_path}.lock")
    before = file_digest(db_path), lock.read_bytes()
    figures = stats.dataset_stats(db_path, None)
    hits = search.search_hits(db_path, word, limit=100)
    matches = search.count_matches(db_path, word)
    write_report(db_path, tmp_path / "report.html")
    assert (file_digest(db_path), lock.read_bytes()) == before and deferred_names(db_path) == waiting
    assert hits == expected_hits and matches == len(hits[0]) > 0
    state = figures.pop("derived")
    assert figures.pop("derived_ready") is False and expected.pop("derived_ready") is True
    assert expected.pop("derived") is None and figures == expected
    assert state["waiting"] == len(waiting) and state["last_run"]["status"] == "done"
    assert state["read_only"] is None
    note = format_stats({**figures, "derived": state})
    assert "stats indexes are not built yet" in note and "`indexer index ROOT` builds them" in note
    assert "holds" not in note
    assert search.search_state(db_path)["derived"]["search"] and search.search_status(db_path) is None


def test_a_build_that_fails_is_named_and_left_for_the_next_run(cli, data_root, db_path, gen, monkeypatch):
    """A full disk during the build is reported as a full disk (never as another writer); the
    readers then name the run that stopped, and the next run builds."""
    def full_disk(conn: sqlite3.Connection, progress: bool = False) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(apply, "BULK_MIN_KEYS", 1)
    monkeypatch.setattr(index, "build_derived", full_disk)
    gen.make_dataset(data_root, 25, faults=0.0, seed=6)
    failed = cli("index", data_root, "--db", db_path, "--quiet")
    assert failed.exit_code == 1 and "database or disk is full" in failed.stderr
    assert "being written" not in failed.stderr and "holds" not in failed.stderr
    shown = cli("stats", "--db", db_path)
    assert shown.exit_code == 0
    assert "run #1 stopped before building them (failed: database or disk is full)" in shown.stdout
    found = cli("search", first_word(db_path), "--db", db_path)
    assert found.exit_code == 0 and found.stdout and "built a temporary one" in found.stderr
    monkeypatch.undo()
    monkeypatch.setattr(change, "RACY_WINDOW_NS", 0)
    assert cli("index", data_root, "--db", db_path, "--quiet").exit_code == 0
    assert not deferred_names(db_path) and fts_in_sync(db_path)
    shown = cli("stats", "--db", db_path)
    assert "not built" not in shown.stdout and "note:" not in shown.stdout


def test_while_a_run_goes_on_readers_say_so(data_root, db_path, gen):
    gen.make_dataset(data_root, 20, faults=0.0, seed=4)
    index_root(db_path, data_root, workers=1)
    conn = store.connect(db_path)
    derived.defer_derived(conn)
    run_id = store.start_run(conn, "data", "index")
    with lock.writer_lock(db_path, "index"):
        figures = stats.dataset_stats(db_path, None)
    conn.close()
    assert figures["derived"]["last_run"]["id"] == run_id and figures["samples"] == 20
    assert f"`indexer index` run #{run_id} (started " in format_stats(figures)
    assert "is still going on, or was killed" in format_stats(figures)
