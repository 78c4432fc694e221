"""Keeping the full-text index current: the writers (index, watch, extract) add the queued captions
in bulk at the end of every update; `search` reads how many are still queued, and searches a
temporary copy of the index while the database's own awaits its build.

The FTS5 table (schema/003_query.sql) is external-content over `samples`. New rows are queued in
`search_pending` by a cheap trigger (row-by-row FTS inserts in a trigger cost a first index run
~70% more); deleted rows and edited captions leave their old text in `search_stale` (schema 012),
taken out of the FTS here in one statement before the queued rows go in.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from indexer import media, store
from indexer.progress import bar

SYNC_CHUNK = 20_000  # ids per transaction: a killed sync keeps what it finished
# samples_fts's options (schema/003_query.sql): the temporary index must tokenize and rank alike.
FTS_OPTIONS = "detail = column, tokenize = 'unicode61 remove_diacritics 2'"
TEMPORARY_CHUNK = 20_000  # captions per insert into a temporary index: the progress bar's step


def sync_search_index(conn: sqlite3.Connection, chunk: int = SYNC_CHUNK) -> int:
    """Add the captions of every queued sample to the FTS; returns how many rows were added."""
    added = 0
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'search_pending'").fetchone():
        return added  # a schema without search (the benchmark's baseline)
    with store.transaction(conn):
        if fts_deferred(conn):
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


def fts_deferred(conn: sqlite3.Connection) -> bool:
    """The FTS awaits its rebuild: a bulk write dropped its triggers (ingest/derived.py), so it
    holds none of that write's captions."""
    return conn.execute("SELECT 1 FROM deferred_structures WHERE type = 'trigger' LIMIT 1").fetchone() \
        is not None


@contextlib.contextmanager
def temporary_search_index(db_path: str | os.PathLike[str], samples: int,
                           progress: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection where `samples_fts` holds every sample's captions, for a search of a database
    whose own FTS awaits its build (the run that deferred it is going on, or stopped first, or the
    database is read-only).

    The database is attached read-only to a private temporary one (SQLite deletes it on close),
    whose TEMP schema gets an FTS with the same tokenizer and detail, external-content over a view
    of the database's captions (with detail=column bm25 counts a term in the text itself, so a
    contentless FTS would score every match 0), filled from the samples: the same matches and
    bm25 scores as the built index, one pass over the captions per search, and nothing written to
    the database. Unqualified `samples`, `datasets` and `search_stale` resolve to the database.
    """
    temp = sqlite3.connect("", isolation_level=None, uri=True, check_same_thread=False)
    try:
        temp.execute("PRAGMA cache_size = -16384")
        temp.execute("ATTACH DATABASE ? AS indexed", (media.read_uri(os.fspath(db_path)),))
        temp.execute("CREATE TEMP VIEW samples_captions AS"
                     " SELECT id, short_caption, long_caption FROM indexed.samples")
        temp.execute("CREATE VIRTUAL TABLE temp.samples_fts USING fts5(short_caption, long_caption,"
                     f" content = 'samples_captions', content_rowid = 'id', {FTS_OPTIONS})")
        with bar(progress, desc="temporary search index", unit=" samples", total=samples) as fill_bar:
            last = -1
            while True:
                with store.transaction(temp):
                    cursor = temp.execute(
                        "INSERT INTO temp.samples_fts (rowid, short_caption, long_caption)"
                        " SELECT id, short_caption, long_caption FROM indexed.samples WHERE id > ?"
                        " ORDER BY id LIMIT ? RETURNING rowid", (last, TEMPORARY_CHUNK))
                    ids = [row[0] for row in cursor]
                if not ids:
                    break
                last = ids[-1]
                fill_bar.update(len(ids))
        temp.execute("PRAGMA query_only = ON")
        yield temp
    finally:
        temp.close()
