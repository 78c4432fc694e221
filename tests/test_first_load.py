"""A first load's write path: rows copied in without SQLite computing the virtual columns, and,
into a database that holds nothing else, written without waiting for the disk until the load's
end. The database it leaves is the one the plain path leaves; readers never see anything else;
a machine restart during such a load is caught by every command."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from indexer import store, unsynced
from indexer.ingest import apply, derived, virtual_columns
from indexer.ingest.bulk import write_scratch
from indexer.ingest.index import index_root
from indexer.ingest.recorder import Recorder, ScratchBatch
from indexer.inspect import search

pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled

SKIPPED_COLUMNS = {("datasets", "created_ns")}  # when each run made the row
SKIPPED_TABLES = {"runs"}  # times and durations


def content(db: Path) -> dict[str, list[tuple]]:
    """Every table's rows, every column (generated ones included, with their types), and the schema."""
    conn = sqlite3.connect(db)
    try:
        found = {"schema": sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema"))}
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%'")]
        for table in tables:
            if table in SKIPPED_TABLES:
                continue
            columns = [f'"{row[1]}"' for row in conn.execute(f'PRAGMA table_xinfo("{table}")')
                       if (table, row[1]) not in SKIPPED_COLUMNS]
            typed = ", ".join(f"{column}, typeof({column})" for column in columns)
            found[table] = sorted(conn.execute(f'SELECT {typed} FROM "{table}"'), key=repr)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return found
    finally:
        conn.close()


def plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load as it was: virtual columns computed, every write waiting for the disk, the
    status index kept."""
    monkeypatch.setattr(virtual_columns, "_plans", {})
    monkeypatch.setattr(virtual_columns, "_plan", lambda conn: None)
    monkeypatch.setattr(unsynced, "boot_id", lambda: None)
    monkeypatch.setattr(derived, "KEPT_INDEXES", ("samples_status", "samples_other_files"))


@pytest.fixture
def bulk_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any first run is a bulk write (its derived structures deferred), as 20k samples are."""
    monkeypatch.setattr(apply, "BULK_MIN_KEYS", 1)
    monkeypatch.setattr(virtual_columns, "_plans", {})


@pytest.mark.usefixtures("bulk_everything")
def test_a_first_load_leaves_the_database_the_plain_path_leaves(data_root, tmp_path, gen, sample_files,
                                                                monkeypatch):
    gen.make_dataset(data_root, 60, faults=0.4, seed=7)  # bad JSON, sizes as strings, odd names...
    sample_files.pair(data_root, "two/images", ext="png")
    sample_files.pair(data_root, "two/images", ext="jpg")  # other_files
    defined = []
    real_define = virtual_columns._define
    monkeypatch.setattr(virtual_columns, "_define", lambda conn, sql: (defined.append(sql),
                                                                       real_define(conn, sql)))
    index_root(tmp_path / "new.sqlite", data_root, workers=2)
    assert len(defined) > 2 and any(virtual_columns._plans.values())  # the stand-in was used
    with monkeypatch.context() as plain:
        plain_path(plain)
        index_root(tmp_path / "plain.sqlite", data_root, workers=2)
    new, old = content(tmp_path / "new.sqlite"), content(tmp_path / "plain.sqlite")
    assert new == old and "two/images" in {row[4] for row in new["samples"]}  # (column, type) pairs
    for words in ("castle", "dragon", "a"):
        assert search.search(tmp_path / "new.sqlite", words) == search.search(tmp_path / "plain.sqlite",
                                                                               words)


@pytest.mark.usefixtures("bulk_everything")
def test_readers_never_see_the_stand_in(data_root, db_path, gen, monkeypatch):
    gen.make_dataset(data_root, 40, faults=0.0, seed=3)
    store.connect(db_path).close()
    original = sqlite3.connect(db_path).execute(
        "SELECT sql FROM sqlite_schema WHERE name = 'samples'").fetchone()[0]
    seen = []
    real_define = virtual_columns._define

    def define(conn: sqlite3.Connection, sql: str) -> None:
        real_define(conn, sql)
        reader = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            seen.append((sql == original,
                         reader.execute("SELECT sql FROM sqlite_schema WHERE name = 'samples'").fetchone()[0],
                         reader.execute("SELECT count(short_caption) FROM samples").fetchone()))
        finally:
            reader.close()

    monkeypatch.setattr(virtual_columns, "_define", define)
    index_root(db_path, data_root, workers=1)
    assert {is_original for is_original, _sql, _count in seen} == {False, True}  # stand-in, then back
    assert all(sql == original for _is_original, sql, _count in seen)


def scratch_batch(tmp_path: Path, name: str, keys: list[str]) -> ScratchBatch:
    path = str(tmp_path / f"task-{name}.sqlite")
    meta = '{"short_caption": "a red castle", "source": "s"}'
    results = [(key, ("png", "json", 8, 8, "json", "ok", None, None, meta),
                (len(meta), 1, 10, 5, 2, None, None, None, None), 2) for key in keys]
    rows, json_bytes = write_scratch(path, results)
    return ScratchBatch(path, len(keys), rows, 2 * len(keys), json_bytes)


def test_a_copy_that_fails_leaves_the_definition_and_this_connection_as_they_were(tmp_path, db_path):
    conn = store.connect(db_path)
    dataset = store.ensure_dataset(conn, "d", tmp_path)
    derived.defer_derived(conn)
    original = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'samples'").fetchone()[0]
    recorder = Recorder(conn, dataset)
    with pytest.raises(sqlite3.IntegrityError):  # the same key twice in one batch
        recorder.record_scratch(scratch_batch(tmp_path, "1", ["a", "b", "b"]), fresh=True)
    assert conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'samples'").fetchone()[0] == original
    assert conn.execute("SELECT count(*) FROM samples").fetchone() == (0,)
    recorder.record_scratch(scratch_batch(tmp_path, "2", ["a", "b", "c"]), fresh=True)
    assert conn.execute("SELECT key, short_caption, image FROM samples ORDER BY key").fetchall() == [
        ("a", "a red castle", "a.png"), ("b", "a red castle", "b.png"), ("c", "a red castle", "c.png")]
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_no_stand_in_while_a_trigger_or_an_index_needs_the_virtual_columns(tmp_path, db_path):
    conn = store.connect(db_path)
    store.ensure_dataset(conn, "d", tmp_path)
    with store.transaction(conn):
        assert virtual_columns._plan(conn) is None  # the search triggers read the captions
    derived.defer_derived(conn)
    with store.transaction(conn):
        assert virtual_columns._plan(conn) is not None
    conn.execute("CREATE INDEX by_source ON samples (dataset, source)")
    with store.transaction(conn):
        assert virtual_columns._plan(conn) is None
    conn.close()


# --- written without waiting for the disk -----------------------------------------------------


def first_load_sync_levels(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The writer's PRAGMA synchronous at each scratch batch it copies (0 OFF, 1 NORMAL)."""
    levels: list[int] = []
    real = Recorder.record_scratch

    def record_scratch(self: Recorder, batch: ScratchBatch, **options) -> None:
        levels.append(self.conn.execute("PRAGMA synchronous").fetchone()[0])
        real(self, batch, **options)

    monkeypatch.setattr(Recorder, "record_scratch", record_scratch)
    return levels


def test_a_first_load_into_an_empty_database_waits_for_the_disk_once_at_its_end(data_root, db_path, gen,
                                                                                monkeypatch):
    gen.make_dataset(data_root, 30, faults=0.0, seed=5)
    levels = first_load_sync_levels(monkeypatch)
    marked = []
    real_settle = unsynced.settle
    marker = Path(unsynced.marker_path(db_path))
    monkeypatch.setattr(unsynced, "settle", lambda path: (marked.append(
        marker.read_text().strip() if marker.exists() else None), real_settle(path)))
    index_root(db_path, data_root, workers=1)
    assert levels and set(levels) == {0}
    assert marked == [None, unsynced.boot_id()]  # at the run's start, and at the load's end
    assert not Path(unsynced.marker_path(db_path)).exists()
    conn = store.connect(db_path)
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)
    conn.close()


def test_a_database_that_holds_something_else_keeps_waiting_for_the_disk(new_folder, db_path, gen,
                                                                          monkeypatch):
    one, two = new_folder("one"), new_folder("two")
    gen.make_dataset(one, 10, faults=0.0, seed=1)
    gen.make_dataset(two, 10, faults=0.0, seed=2)
    index_root(db_path, one, workers=1)
    levels = first_load_sync_levels(monkeypatch)
    began = []
    monkeypatch.setattr(unsynced, "begin", lambda path: began.append(path) or True)
    index_root(db_path, two, workers=1)  # the first load of a second dataset
    assert levels and set(levels) == {1} and began == []


def test_without_a_boot_id_a_first_load_keeps_waiting_for_the_disk(data_root, db_path, gen, monkeypatch):
    gen.make_dataset(data_root, 10, faults=0.0, seed=5)
    monkeypatch.setattr(unsynced, "BOOT_ID", str(db_path.parent / "no-such-file"))
    levels = first_load_sync_levels(monkeypatch)
    index_root(db_path, data_root, workers=1)
    assert levels and set(levels) == {1} and not Path(unsynced.marker_path(db_path)).exists()


def test_a_restart_during_an_unsynced_load_is_refused_by_every_command(data_root, db_path, gen, cli):
    gen.make_dataset(data_root, 10, faults=0.0, seed=5)
    index_root(db_path, data_root, workers=1)
    Path(unsynced.marker_path(db_path)).write_text("another-boot\n")
    before = db_path.read_bytes()
    for command in (("index", data_root), ("stats",), ("query", "SELECT 1")):
        result = cli(*command, "--db", db_path)
        assert result.exit_code == 1 and "machine restarted" in result.stderr
        assert "Delete it" in result.stderr and str(db_path) in result.stderr
    assert db_path.read_bytes() == before


def test_a_deleted_database_forgets_its_stale_marker(data_root, db_path, gen):
    gen.make_dataset(data_root, 10, faults=0.0, seed=5)
    Path(unsynced.marker_path(db_path)).write_text("another-boot\n")  # its database was deleted
    summary = index_root(db_path, data_root, workers=1)
    assert summary["added"] == 10 and not Path(unsynced.marker_path(db_path)).exists()


def test_a_killed_load_is_flushed_by_the_next_writer_and_readable_meanwhile(data_root, db_path, gen, cli,
                                                                            monkeypatch):
    gen.make_dataset(data_root, 10, faults=0.0, seed=5)
    index_root(db_path, data_root, workers=1)
    assert unsynced.begin(db_path)  # as a load killed in this boot leaves it
    assert cli("stats", "--db", db_path).exit_code == 0
    settled = []
    real_settle = unsynced.settle
    monkeypatch.setattr(unsynced, "settle", lambda path: (settled.append(
        Path(unsynced.marker_path(path)).exists()), real_settle(path)))
    assert index_root(db_path, data_root, workers=1)["files_read"] == 0
    assert settled[0] is True and not Path(unsynced.marker_path(db_path)).exists()


def test_a_marker_that_cannot_be_written_keeps_the_load_waiting_for_the_disk(data_root, db_path, gen,
                                                                             monkeypatch):
    gen.make_dataset(data_root, 10, faults=0.0, seed=5)
    monkeypatch.setattr(unsynced, "marker_path", lambda path: str(db_path.parent / "gone" / "marker"))
    levels = first_load_sync_levels(monkeypatch)
    assert index_root(db_path, data_root, workers=1)["added"] == 10
    assert levels and set(levels) == {1} and not (db_path.parent / "gone").exists()
