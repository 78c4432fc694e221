"""Derived structures: the stats indexes and the full-text search, built on first use.

A first index of a million samples would otherwise spend a third of its time maintaining
structures nobody has asked for yet: five expression indexes that each re-parse `meta`, and the
FTS queue trigger plus its bulk sync. A bulk write drops them (their SQL is kept in
`deferred_structures`); `ensure_derived` builds them when `stats`, `search` or `report` first
needs them, and from then on SQLite and the triggers keep them current row by row.
"""

from __future__ import annotations

import os
import sqlite3

from indexer import store
from indexer.db import lock
from indexer.errors import IndexerError
from indexer.progress import bar

# Kept by bulk writes: `problems`, the run summaries and every export filter on samples_status;
# the rerun diff finds the rare samples with other files through samples_other_files.
KEPT_INDEXES = ("samples_status", "samples_other_files")
FTS_TRIGGERS = "samples_fts_%"


def defer_derived(conn: sqlite3.Connection) -> None:
    """Drop the derived structures for a bulk write (a no-op when they are already deferred)."""
    rows = conn.execute(
        "SELECT name, sql, type FROM sqlite_schema WHERE sql IS NOT NULL AND ("
        f" (type = 'index' AND tbl_name = 'samples' AND name NOT IN ({', '.join('?' * len(KEPT_INDEXES))}))"
        " OR (type = 'trigger' AND name LIKE ?))",
        (*KEPT_INDEXES, FTS_TRIGGERS),
    ).fetchall()
    if not rows:
        return
    with store.transaction(conn):
        conn.executemany(
            "INSERT OR REPLACE INTO deferred_structures (name, sql, type) VALUES (?, ?, ?)", rows)
        for name, _sql, kind in rows:
            conn.execute(f'DROP {kind.upper()} "{name}"')


def deferred_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM deferred_structures").fetchone()[0]


def build_derived(conn: sqlite3.Connection, progress: bool = False) -> int:
    """Build every deferred structure; returns how many were built.

    Each index is one transaction (a kill keeps the finished ones). The FTS is rebuilt from the
    samples and its triggers re-created in ONE transaction, so no row can slip in between.
    """
    rows = conn.execute("SELECT name, sql, type FROM deferred_structures ORDER BY type, name").fetchall()
    indexes = [(name, sql) for name, sql, kind in rows if kind == "index"]
    triggers = [(name, sql) for name, sql, kind in rows if kind == "trigger"]
    steps = len(indexes) + bool(triggers)
    with bar(progress and steps > 0, desc="building stats indexes and search", unit=" steps",
             total=steps) as build_bar:
        for name, sql in indexes:
            with store.transaction(conn):
                conn.execute(sql)
                conn.execute("DELETE FROM deferred_structures WHERE name = ?", (name,))
            build_bar.update(1)
        if triggers:
            with store.transaction(conn):
                conn.execute("DELETE FROM search_pending")
                conn.execute("DELETE FROM search_stale")
                conn.execute("INSERT INTO samples_fts (samples_fts) VALUES ('rebuild')")
                for name, sql in triggers:
                    conn.execute(sql)
                    conn.execute("DELETE FROM deferred_structures WHERE name = ?", (name,))
            build_bar.update(1)
    return len(rows)


def ensure_derived(db_path: str | os.PathLike[str], progress: bool = False) -> bool:
    """Build the deferred structures unless a writer is running; True when they are all in place.

    Only the first `stats`/`search` after a bulk index pays (see the README for what it costs).
    While `index`, `watch` or `extract` holds the database the build waits for a later call, and
    the caller answers without them (slower stats; a search that may miss the newest samples).
    """
    reader = store.connect(db_path, readonly=True)
    try:
        if not deferred_count(reader):
            return True
    finally:
        reader.close()
    try:
        with lock.writer_lock(db_path, "stats/search (building derived indexes)"):
            conn = store.connect(db_path)
            try:
                build_derived(conn, progress)
            finally:
                conn.close()
    except (IndexerError, OSError):  # a writer holds it, or the database is read-only for us
        return False
    return True
