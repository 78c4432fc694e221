"""Keeping the full-text index current: the writers (index, watch, extract) add the queued captions
in bulk at the end of every update; `search` reads how many are still queued.

The FTS5 table (schema/003_query.sql) is external-content over `samples`. New rows are queued in
`search_pending` by a cheap trigger (row-by-row FTS inserts in a trigger cost a first index run
~70% more); deleted rows and edited captions leave their old text in `search_stale` (schema 012),
taken out of the FTS here in one statement before the queued rows go in.
"""

from __future__ import annotations

import sqlite3

from indexer import store

SYNC_CHUNK = 20_000  # ids per transaction: a killed sync keeps what it finished


def sync_search_index(conn: sqlite3.Connection, chunk: int = SYNC_CHUNK) -> int:
    """Add the captions of every queued sample to the FTS; returns how many rows were added."""
    added = 0
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'search_pending'").fetchone():
        return added  # a schema without search (the benchmark's baseline)
    with store.transaction(conn):
        if conn.execute("SELECT 1 FROM deferred_structures WHERE type = 'trigger' LIMIT 1").fetchone():
            # the FTS awaits its rebuild (ingest/derived.py), which redoes whatever is queued
            conn.execute("DELETE FROM search_stale")
            conn.execute("DELETE FROM search_pending")
            return added
        conn.execute(
            "INSERT INTO samples_fts (samples_fts, rowid, short_caption, long_caption)"
            " SELECT 'delete', id, short_caption, long_caption FROM search_stale ORDER BY id")
        conn.execute("DELETE FROM search_stale")
    while True:
        with store.transaction(conn):
            upper = conn.execute(
                "SELECT max(id) FROM (SELECT id FROM search_pending ORDER BY id LIMIT ?)", (chunk,)
            ).fetchone()[0]
            if upper is None:
                return added
            cursor = conn.execute(
                "INSERT INTO samples_fts (rowid, short_caption, long_caption)"
                " SELECT s.id, s.short_caption, s.long_caption FROM search_pending AS p"
                " JOIN samples AS s ON s.id = p.id WHERE p.id <= ? ORDER BY s.id", (upper,))
            added += max(cursor.rowcount, 0)
            conn.execute("DELETE FROM search_pending WHERE id <= ?", (upper,))


def pending_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM search_pending").fetchone()[0]
