"""Re-read the keys a scan (or `watch`) listed in TEMP table scan_changes, in reader processes, and
record them in key order through a Recorder (a first run of a dataset through bulk.py's scratch
databases)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from indexer.db.counts import sample_count
from indexer.ingest.bulk import bulk_load
from indexer.ingest.derived import defer_derived
from indexer.ingest.engines import fallback_for, pool_for
from indexer.ingest.pipeline import KEYS_PER_COMMIT
from indexer.ingest.recorder import Recorder
from indexer.ingest.rows import CompactResult, Counts, ReadSettings, Task, read_task, task_failed
from indexer.ingest.workers import SMALL_TASKS_AHEAD, map_in_order
from indexer.progress import bar

BULK_MIN_KEYS = 20_000  # a run that rewrites this many samples (and most of them) defers indexes
KEYS_PER_TASK = 256


def apply_changes(recorder: Recorder, settings: ReadSettings, *, progress: bool,
                  keys_per_commit: int = KEYS_PER_COMMIT) -> None:
    """Re-read the keys listed in scan_changes and record them, in key order, batch by batch."""
    conn, dataset = recorder.conn, recorder.dataset
    total = _order_changes(conn)
    if not total:
        return
    if total >= BULK_MIN_KEYS and total * 2 >= sample_count(conn, dataset):
        defer_derived(conn)  # built at the end of this run, in one sorted pass each (derived.py)
    # A dataset with no stored sample yet (a first run) has nothing to merge with or replace.
    fresh = conn.execute("SELECT 1 FROM samples WHERE dataset = ? LIMIT 1", (dataset,)).fetchone() is None
    with bar(progress, desc="read", unit=" samples", total=total) as read_bar:
        if fresh:
            bulk_load(recorder, _tasks(recorder, keys_per_commit, fresh=True), settings, read_bar.update)
            return
        pending: list[CompactResult] = []
        tasks = _tasks(recorder, min(KEYS_PER_TASK, keys_per_commit))
        for results in _run_tasks(tasks, settings, recorder.counts):
            pending.extend(results)
            read_bar.update(len(results))
            if len(pending) >= keys_per_commit:
                recorder.record(pending)
                pending = []
        recorder.record(pending)


def _order_changes(conn: sqlite3.Connection) -> int:
    """Group scan_changes by key, sorted, into TEMP table scan_order; returns how many keys."""
    conn.execute("DROP TABLE IF EXISTS temp.scan_order")
    conn.execute(
        "CREATE TEMP TABLE scan_order AS SELECT key, group_concat(op || path, char(0)) AS changes"
        " FROM scan_changes GROUP BY key ORDER BY key"
    )
    return conn.execute("SELECT count(*) FROM scan_order").fetchone()[0]


def _tasks(recorder: Recorder, keys_per_task: int, fresh: bool = False) -> Iterator[Task]:
    """scan_order (_order_changes: sorted, so writes hit the B-tree in order) as task lists.

    SQLite has grouped and sorted the changes into one row a key, read back in pages with fetchall: a
    cursor left open across the batches' write transactions would pin this connection's read
    snapshot (SQLite keeps it for the open statement), and the next BEGIN IMMEDIATE after any other
    process wrote would fail at once with "database is locked" (a stale snapshot bypasses the busy
    timeout).
    """
    conn = recorder.conn
    after = 0
    while rows := conn.execute(
        "SELECT rowid, key, changes FROM scan_order WHERE rowid > ? ORDER BY rowid LIMIT ?",
        (after, keys_per_task),
    ).fetchall():
        after = rows[-1][0]
        if fresh:  # nothing stored to merge: every change is a new file, or a shard index ('D')
            if task := [(key, paths) for _rowid, key, changes in rows if (paths := _new_paths(changes))]:
                yield task
        else:
            yield _current_paths(recorder, [(key, changes) for _rowid, key, changes in rows])
    conn.execute("DROP TABLE IF EXISTS temp.scan_order")


def _new_paths(changes: str) -> str:
    """The paths of a key's 'U' changes ('U' + path, NUL-separated), when nothing is stored: the
    only 'D' a first run lists is a shard's webshart index beside it (scan.py), never a sample."""
    if not changes.startswith("D") and "\0D" not in changes:
        return changes.replace("\0U", "\0")[1:]
    return "\0".join(change[1:] for change in changes.split("\0") if change.startswith("U"))


def _current_paths(recorder: Recorder, changes: list[tuple[str, str]]) -> Task:
    """Each key's files now: the stored ones, minus deletions ('D'), plus new or modified ones ('U')."""
    stored = recorder.stored_files([key for key, _changes in changes])
    tasks = []
    for key, ops in changes:
        paths = set(stored.get(key, ()))
        for change in ops.split("\0"):
            if change[0] == "D":
                paths.discard(change[1:])
            else:
                paths.add(change[1:])
        tasks.append((key, "\0".join(sorted(paths))))
    return tasks


def _run_tasks(tasks: Iterable[Task], settings: ReadSettings,
               counts: Counts) -> Iterator[list[CompactResult]]:
    """Read tasks in worker processes, yielding results in submission (key) order (the waits
    counted in counts.waited_s)."""
    calls = ((task, settings) for task in tasks)
    yield from map_in_order(read_task, calls, settings.workers, settings.workers * SMALL_TASKS_AHEAD,
                            counts.waited, pool_of=pool_for(settings.engine, settings.ray_address, False),
                            on_error=fallback_for(settings.engine, task_failed))
