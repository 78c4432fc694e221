"""Upgrading a database written by a released indexer re-reads nothing and keeps every sample.

Each tests/fixtures/schema_vN.tar.gz (built by scripts/make_schema_fixture.py from the release's
tree) holds that release's database and the sample files it indexed. The files are extracted
and put back exactly as recorded (mtime via os.utime; inode and ctime cannot be restored, so the
records are patched to the new ones, as if the files never moved), then the CURRENT code opens
the database, applies every newer schema file and indexes the root. Nothing in here names a
schema version: a new schema/NNN_*.sql is covered as soon as it exists.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest
from helpers_index import sample_rows

from indexer import store
from indexer.ingest.index import index_root

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("schema_v*.tar.gz"))
# What a released database holds about each sample; compared column for column after the upgrade.
RELEASED_COLUMNS = ("id", "dataset", "key", "image_ext", "json_ext", "width", "height", "size_from",
                    "status", "error", "warning", "meta", "data_version")


def released_stat_signature(size: int, mtime_ns: int, ctime_ns: int, inode: int) -> int:
    """scan.stat_signature as released with the fixtures, copied so it cannot move with the code.

    A real upgraded database keeps the signatures its release wrote: if the code's signature ever
    changes, the upgrade must deal with the stored ones, and this test must see it.
    """
    return (size * 0x9E3779B97F4A7C15 ^ mtime_ns * 0xC2B2AE3D27D4EB4F
            ^ ctime_ns * 0x165667B19E3779F9 ^ inode * 0x27D4EB2F165667C5) & 0x7FFF_FFFF_FFFF_FFFF


def unpack(fixture: Path, into: Path) -> tuple[Path, Path, dict]:
    with tarfile.open(fixture) as tar:
        tar.extractall(into, filter="data")
    manifest = json.loads((into / "fixture.json").read_text(encoding="utf-8"))
    return into / "index.sqlite", into / "data", manifest


def place_as_recorded(db: Path, root: Path) -> None:
    """Give each file its recorded mtime, and each record the file's new inode and ctime."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("UPDATE datasets SET root = ?", (str(root.resolve()),))
        records = conn.execute("SELECT dataset, key, ext, size, mtime_ns FROM files").fetchall()
        for dataset, key, ext, size, mtime_ns in records:
            path = root / f"{key}.{ext}"
            os.utime(path, ns=(mtime_ns, mtime_ns))
            st = os.stat(path)
            assert st.st_size == size, f"{path}: the fixture's file does not match its record"
            conn.execute(
                "UPDATE files SET inode = ?, ctime_ns = ?, sig = ? WHERE dataset = ? AND key = ? AND ext = ?",
                (st.st_ino, st.st_ctime_ns,
                 released_stat_signature(size, mtime_ns, st.st_ctime_ns, st.st_ino), dataset, key, ext))
        conn.commit()
    finally:
        conn.close()


def read_one(db: Path, sql: str):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchone()
    finally:
        conn.close()


def test_the_schema_6_fixture_is_kept():
    assert "schema_v6.tar.gz" in [path.name for path in FIXTURES]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda path: path.name.split(".")[0])
def test_upgrade_rereads_nothing_and_keeps_every_sample(tmp_path, cli, fixture):
    db, root, manifest = unpack(fixture, tmp_path)
    assert read_one(db, "PRAGMA user_version") == (manifest["schema_version"],)
    assert read_one(db, "SELECT count(*) FROM files WHERE racy") == (0,)  # else a rerun reads them
    place_as_recorded(db, root)
    before = sample_rows(db, RELEASED_COLUMNS, order="id")
    assert len(before) == manifest["samples"]
    assert {row[RELEASED_COLUMNS.index("status")] for row in before} == set(manifest["statuses"])
    data_version = read_one(db, "SELECT data_version FROM datasets")

    summary = index_root(db, root, workers=1)

    assert read_one(db, "PRAGMA user_version") == (store.latest_version(),)
    assert summary["files_read"] == 0
    assert (summary["added"], summary["changed"], summary["removed"]) == (0, 0, 0)
    assert summary["samples"] == manifest["samples"]
    assert sample_rows(db, RELEASED_COLUMNS, order="id") == before
    assert read_one(db, "SELECT data_version FROM datasets") == data_version
    # the figure stored before schema 011 is forgotten and summed again from the kept rows
    assert summary["json_bytes"] == sum(path.stat().st_size for path in Path(root).rglob("*.json"))
    stats = cli("stats", "--db", db, "--json")  # the reading code works on the upgraded database
    assert stats.exit_code == 0, stats.stderr
    assert json.loads(stats.stdout)["samples"] == manifest["samples"]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda path: path.name.split(".")[0])
def test_search_follows_edits_after_an_upgrade(tmp_path, cli, fixture, monkeypatch):
    """The search triggers an upgrade replaces (schema 012) keep the FTS right through an edit."""
    from indexer.ingest import change

    monkeypatch.setattr(change, "RACY_WINDOW_NS", 0)
    db, root, _manifest = unpack(fixture, tmp_path)
    place_as_recorded(db, root)
    index_root(db, root, workers=1)
    assert cli("search", "anything", "--db", db).exit_code == 0  # builds the FTS if it was deferred
    edited = next(path for path in sorted(Path(root).rglob("*.json"))
                  if isinstance(json.loads(path.read_bytes() or b"null"), dict))
    record = json.loads(edited.read_bytes())
    record["short_caption"] = "zanzibarquux"
    edited.write_text(json.dumps(record), encoding="utf-8")
    assert index_root(db, root, workers=1)["changed"] == 1
    found = cli("search", "zanzibarquux", "--db", db, "--json")
    assert found.exit_code == 0, found.stderr
    hits = [json.loads(line)["key"] for line in found.stdout.splitlines()]
    assert hits == [edited.relative_to(root).as_posix()[:-5]]
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO samples_fts (samples_fts, rank) VALUES ('integrity-check', 1)")
    assert conn.execute("SELECT count(*) FROM search_stale").fetchone() == (0,)
    conn.close()
