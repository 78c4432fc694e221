"""Derived structures: the stats indexes and the full-text search, deferred during a bulk write and
built by that same writing run before it ends.

A first index of a million samples would spend a third of its time maintaining, row by row,
structures one sorted pass builds far faster: five expression indexes that each re-parse `meta`,
and the FTS queue trigger plus its bulk sync. A bulk write drops them (their SQL is kept in
`deferred_structures`); the run that dropped them builds them at its end (`build_derived`, with a
progress bar), and from then on SQLite and the triggers keep them current row by row.

Why at the end of the writing run and not on first use: the build costs the same there as in the
first `stats` (measured: ~2.5 s at 100k samples either way, see the README), so the user who looks
at the data pays nothing more, while a database left complete by its writer reads fast anywhere,
a read-only copy included, and the reading commands never write. A run killed or failed before its
build leaves them deferred: readers answer without them and say so (`deferred_status`), and the
next writing run builds them.
"""

from __future__ import annotations

import sqlite3

from indexer import store
from indexer.progress import bar

# Kept by bulk writes: the rerun diff finds the rare samples with other files through
# samples_other_files (tiny: partial). samples_status is deferred with the rest: keeping it cost a
# first load ~0.2 of its ~2 writer-seconds at 300k rows, and the run's own summary is made after
# the build; a reader meanwhile (`problems`, an export's status filter) scans the table instead.
KEPT_INDEXES = ("samples_other_files",)
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


def deferred_status(conn: sqlite3.Connection) -> dict | None:
    """None when every derived structure is in place; else what a reader tells the user: how many
    wait, whether the search index is among them, and the last writing run (the one that deferred
    them is still going on, or stopped before its build)."""
    waiting = conn.execute(
        "SELECT count(*), coalesce(max(type = 'trigger'), 0) FROM deferred_structures").fetchone()
    if not waiting[0]:
        return None
    last = conn.execute(
        "SELECT id, command, started_at, status, error FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    keys = ("id", "command", "started_at", "status", "error")
    return {"waiting": waiting[0], "search": bool(waiting[1]),
            "last_run": dict(zip(keys, last, strict=True)) if last else None}
