"""What --db points at is checked before anything is written to it.

A folder, a file that is not SQLite, another application's database, a database from a newer
indexer and one from an unreleased development version are refused with one line (exit 1) by
writing and reading commands alike, and the file is left as it was: same bytes, nothing beside it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from indexer import store
from indexer.errors import IndexerError

COMMANDS = ("index", "stats")


@pytest.fixture
def place(new_folder: Callable[[str], Path]) -> Path:
    """A folder holding only the database under test, so any file left beside it shows."""
    return new_folder("dbs")


@pytest.fixture
def root(data_root: Path, gen) -> Path:
    gen.make_dataset(data_root, 3, faults=0.0, seed=5)
    return data_root


def folder_state(folder: Path) -> dict[str, bytes | None]:
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in sorted(folder.iterdir())}


def run(cli, command: str, db: Path, root: Path):
    args = ("index", root, "--db", db, "--quiet") if command == "index" else ("stats", "--db", db)
    return cli(*args)


def refused_line(result) -> str:
    """The refusal is exit 1 and exactly one line on stderr, never a traceback."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert lines[0].startswith("error: database ")
    return lines[0]


def foreign_db(path: Path, *, wal: bool = False) -> Path:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO contacts VALUES ('Ada', '555')")
    conn.commit()
    conn.close()
    return path


def indexer_db(path: Path, *, upto: int | None = None) -> Path:
    """A database as this code's schema files make it (all of them, or those up to `upto`)."""
    conn = sqlite3.connect(path, isolation_level=None)
    store.migrate(conn, upto=upto)
    conn.close()
    return path


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
def test_another_applications_database_is_refused_and_untouched(cli, place, root, command, wal):
    db = foreign_db(place / "app.sqlite", wal=wal)
    before = folder_state(place)
    line = refused_line(run(cli, command, db, root))
    assert "is not an indexer database" in line
    assert "contacts, notes" in line  # names its tables
    assert "pass another --db path" in line
    assert folder_state(place) == before  # same bytes; no -wal, -shm, -journal or .lock beside it


@pytest.mark.parametrize("readonly", [False, True])
def test_a_foreign_database_with_its_own_user_version_and_a_files_table_is_refused(place, readonly):
    db = foreign_db(place / "app.sqlite")
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE files (name TEXT)")  # a name indexer uses too
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    before = folder_state(place)
    with pytest.raises(IndexerError, match=r"is not an indexer database \(it holds other tables: "
                                           r"contacts, files, notes\)"):
        store.connect(db, readonly=readonly)
    assert folder_state(place) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_that_is_not_sqlite_is_refused_and_untouched(cli, place, root, command):
    db = place / "photo.sqlite"
    db.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    before = folder_state(place)
    line = refused_line(run(cli, command, db, root))
    assert "is not an SQLite file" in line and "pass another --db path" in line
    assert folder_state(place) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_as_db_is_refused(cli, place, root, command):
    line = refused_line(run(cli, command, place, root))
    assert f"database {place} is a folder" in line and "pass a file path with --db" in line
    assert list(place.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_database_from_a_newer_indexer_is_refused_and_untouched(cli, place, root, command):
    db = indexer_db(place / "index.sqlite")
    latest = store.latest_version()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {latest + 1}")
    conn.close()
    before = folder_state(place)
    line = refused_line(run(cli, command, db, root))
    assert f"made by a newer indexer (schema {latest + 1}, this one knows {latest})" in line
    assert "upgrade indexer" in line
    assert folder_state(place) == before


def drop_column(db: Path, table: str = "files", column: str = "sig") -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_development_database_without_a_released_column_is_refused(cli, place, root, command):
    db = indexer_db(place / "index.sqlite")
    drop_column(db, "datasets", "json_bytes")  # as if made while a released file was being edited
    before = folder_state(place)
    line = refused_line(run(cli, command, db, root))
    assert "unreleased development version" in line and "datasets.json_bytes" in line
    assert "cannot be upgraded: move it aside and rerun `indexer index` to rebuild it" in line
    assert "no such column" not in line
    assert folder_state(place) == before


def test_an_old_development_database_is_refused_before_any_upgrade(place):
    db = indexer_db(place / "index.sqlite", upto=3)
    drop_column(db)
    before = folder_state(place)
    with pytest.raises(IndexerError, match=r"development version of indexer \(schema 3 without files\.sig\)"):
        store.connect(db)
    assert folder_state(place) == before  # 004 and later were not applied to it


def test_an_empty_file_becomes_an_indexer_database(cli, place, root):
    db = place / "index.sqlite"
    db.touch()
    assert refused_line(run(cli, "stats", db, root)).endswith(
        f"is empty: run `indexer index ROOT --db {db}` first")
    result = run(cli, "index", db, root)
    assert result.exit_code == 0, result.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone() == (store.latest_version(),)
    assert conn.execute("SELECT count(*) FROM samples").fetchone() == (3,)
    assert conn.execute("PRAGMA page_size").fetchone() == (16384,)  # made as a new database is
    conn.close()
    assert run(cli, "stats", db, root).exit_code == 0


def test_an_older_released_database_is_upgraded_by_a_writer_only(cli, place, root):
    db = indexer_db(place / "index.sqlite", upto=5)
    line = refused_line(run(cli, "stats", db, root))
    assert f"has schema version 5, this indexer needs {store.latest_version()}" in line
    assert run(cli, "index", db, root).exit_code == 0
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (store.latest_version(),)
    assert run(cli, "stats", db, root).exit_code == 0


def test_a_folder_name_with_uri_characters_works_read_only(cli, tmp_path, root):
    folder = tmp_path / "runs?v=1#a%20b"
    folder.mkdir()
    db = folder / "index.sqlite"
    assert run(cli, "index", db, root).exit_code == 0
    result = run(cli, "stats", db, root)
    assert result.exit_code == 0, result.stderr
    assert "3 samples" in result.stdout


def test_the_installed_command_refuses_a_foreign_database(place, root):
    """The real entry point, in its own process: one line on stderr, exit 1, the file untouched."""
    db = foreign_db(place / "app.sqlite")
    before = folder_state(place)
    proc = subprocess.run([sys.executable, "-m", "indexer", "index", str(root), "--db", str(db)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: database {db} is not an indexer database (it holds other tables: contacts, notes): "
        "pass another --db path; indexer adds nothing to another application's database"]
    assert folder_state(place) == before
