"""The one write path of the ingest: read keys in worker processes, record them in sorted batches.

`index` (loose files, index.py), tar shards in place (shards.py) and `extract` (extract/writer.py)
all record samples through this module, so the rules of a write live in one place: which origin
owns a key, when a sample counts as added, changed or removed, when data_version moves. Its
interface:

- `Counts`, `compact(...)` -> `CompactResult` (from rows.py): what a run wrote so far, and a read
  sample in the flat form readers send back;
- `apply_changes(...)`: read every key listed in TEMP table scan_changes (scan.py, or
  index.update_paths) in reader processes and write the results in key order (a first run of a
  dataset through bulk.py's scratch databases);
- `write_results(...)`: record one batch of CompactResults in one transaction (`write_batches`:
  a long sorted list of them, batch by batch);
- `stored_files(...)`: the loose files recorded for some keys (to re-read a key whole);
- `json_bytes(...)` / `cached_json_bytes(...)`: the dataset's JSON bytes for the run summaries
  (every batch keeps the stored figure current).

Crash safety comes from a key's stat records living in its sample row (schema 009): a run killed
before a batch commits leaves those files unrecorded, so the next run sees them again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

import orjson

from indexer import store
from indexer.db.counts import sample_count
from indexer.ingest.bulk import bulk_load
from indexer.ingest.derived import defer_derived
from indexer.ingest.records import STAT_COLUMNS, STORED_COLUMNS, json_bytes_in, recorded_files
from indexer.ingest.rows import SHARD_AT, CompactResult, Counts, Task, compact, read_task
from indexer.ingest.workers import map_in_order
from indexer.progress import bar

__all__ = ["KEYS_PER_COMMIT", "CompactResult", "Counts", "apply_changes", "cached_json_bytes", "compact",
           "json_bytes", "stored_files", "write_batches", "write_results"]

BULK_MIN_KEYS = 20_000  # a run that rewrites this many samples (and most of them) defers indexes
KEYS_PER_TASK = 256
KEYS_PER_COMMIT = 4096  # ~10k rows a transaction: fast, and a kill loses little work


def apply_changes(
    conn: sqlite3.Connection,
    dataset: str,
    root: str,
    scan_start_ns: int,
    *,
    workers: int,
    verify_images: bool,
    progress: bool,
    keys_per_commit: int = KEYS_PER_COMMIT,
) -> Counts:
    """Re-read the keys listed in scan_changes and write them, in key order, batch by batch."""
    counts = Counts()
    total = _order_changes(conn)
    if not total:
        return counts
    if total >= BULK_MIN_KEYS and total * 2 >= sample_count(conn, dataset):
        defer_derived(conn)  # built again on first use, off the critical path
    # A dataset with no stored sample yet (a first run) has nothing to merge with or replace.
    fresh = conn.execute("SELECT 1 FROM samples WHERE dataset = ? LIMIT 1", (dataset,)).fetchone() is None
    if fresh:
        with bar(progress, desc="read", unit=" samples", total=total) as read_bar:
            bulk_load(conn, dataset, _tasks(conn, dataset, keys_per_commit, fresh=True), root, scan_start_ns,
                      verify_images, workers, counts, read_bar.update)
        return counts
    tasks = _tasks(conn, dataset, min(KEYS_PER_TASK, keys_per_commit))
    with bar(progress, desc="read", unit=" samples", total=total) as read_bar:
        pending: list[CompactResult] = []
        for results in _run_tasks(tasks, root, scan_start_ns, verify_images, workers, counts):
            pending.extend(results)
            read_bar.update(len(results))
            if len(pending) >= keys_per_commit:
                write_results(conn, dataset, pending, counts)
                pending = []
        if pending:
            write_results(conn, dataset, pending, counts)
    return counts


def _order_changes(conn: sqlite3.Connection) -> int:
    """Group scan_changes by key, sorted, into TEMP table scan_order; returns how many keys."""
    conn.execute("DROP TABLE IF EXISTS temp.scan_order")
    conn.execute(
        "CREATE TEMP TABLE scan_order AS SELECT key, group_concat(op || path, char(0)) AS changes"
        " FROM scan_changes GROUP BY key ORDER BY key"
    )
    return conn.execute("SELECT count(*) FROM scan_order").fetchone()[0]


def _tasks(conn: sqlite3.Connection, dataset: str, keys_per_task: int, fresh: bool = False) -> Iterator[Task]:
    """scan_order (_order_changes: sorted, so writes hit the B-tree in order) as task lists.

    SQLite has grouped and sorted the changes into one row a key, read back in pages with fetchall: a
    cursor left open across the batches' write transactions would pin this connection's read
    snapshot (SQLite keeps it for the open statement), and the next BEGIN IMMEDIATE after any other
    process wrote would fail at once with "database is locked" (a stale snapshot bypasses the busy
    timeout).
    """
    after = 0
    while rows := conn.execute(
        "SELECT rowid, key, changes FROM scan_order WHERE rowid > ? ORDER BY rowid LIMIT ?",
        (after, keys_per_task),
    ).fetchall():
        after = rows[-1][0]
        if fresh:  # nothing stored to merge: every change is a new file ('U' + path)
            yield [(key, changes.replace("\0U", "\0")[1:]) for _rowid, key, changes in rows]
        else:
            yield _current_paths(conn, dataset, [(key, changes) for _rowid, key, changes in rows])
    conn.execute("DROP TABLE IF EXISTS temp.scan_order")


def _current_paths(conn: sqlite3.Connection, dataset: str, changes: list[tuple[str, str]]) -> Task:
    """Each key's files now: the stored ones, minus deletions ('D'), plus new or modified ones ('U')."""
    stored = stored_files(conn, dataset, [key for key, _changes in changes])
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


def stored_files(conn: sqlite3.Connection, dataset: str, keys: list[str]) -> dict[str, dict[str, int | None]]:
    """The loose files recorded for these keys, {key: {path: stat signature}}, straight from the
    sample rows: the `files` view cannot push an IN list into its UNION (it would scan them all)."""
    return {row[0]: recorded_files(*row) for row in conn.execute(
        "SELECT key, json_ext, json_sig, image_ext, image_sig, other_files FROM samples WHERE dataset = ?"
        " AND key IN (SELECT value FROM json_each(?)) AND shard IS NULL",
        (dataset, orjson.dumps(keys).decode()),
    )}


def _run_tasks(
    tasks: Iterable[Task],
    root: str,
    scan_start_ns: int,
    verify_images: bool,
    workers: int,
    counts: Counts,
) -> Iterator[list[CompactResult]]:
    """Read tasks in worker processes, yielding results in submission (key) order (the waits
    counted in counts.waited_s)."""
    calls = ((task, root, scan_start_ns, verify_images) for task in tasks)
    yield from map_in_order(read_task, calls, workers, workers * 4, counts.waited)


def write_results(
    conn: sqlite3.Connection,
    dataset: str,
    results: list[CompactResult],
    counts: Counts,
    origin: str | None = None,
) -> None:
    """Record a batch of keys (content and stat records in one row per sample), in one transaction.

    origin: where the batch's files are (a shard's path, or None for loose files). A key two
    origins hold belongs to loose files first, then to the shard first in path order, whatever
    order they were seen in (so an incremental index equals a fresh one); each such meeting is
    noted in counts.conflicts for shards.py to record.

    A batch that changes samples moves the dataset's data_version in the same transaction, so an
    export that read the data before this commit is never taken for one made after it.
    """
    keys = [key for key, *_ in results]
    width = len(STORED_COLUMNS)
    old = {
        row[0]: (row[1 : width + 1], row[width + 1 :])
        for row in conn.execute(
            f"SELECT key, {', '.join(STORED_COLUMNS + STAT_COLUMNS)} FROM samples "
            "WHERE dataset = ? AND key IN (SELECT value FROM json_each(?))",
            (dataset, orjson.dumps(keys).decode()),
        )
    }
    upserts = []
    deletes = []
    restats = []  # same content, files touched: new stat records, no new data_version
    json_delta = 0  # what the batch changes datasets.json_bytes by
    for key, row, stats, files_read in results:
        counts.files_read += files_read
        previous = old.get(key)
        if previous is not None and previous[1][SHARD_AT] != origin:
            holder = previous[1][SHARD_AT]
            if row is None or _rank(holder) < _rank(origin):
                if row is not None:
                    counts.conflicts.append((key, origin, holder))
                continue  # the holder keeps it
            counts.conflicts.append((key, holder, origin))
        if previous is not None and (row is None or previous[0] != row or previous[1] != stats):
            json_delta -= json_bytes_in(previous[1])
        if row is None:
            if previous is not None:
                deletes.append((dataset, key))
                counts.removed += 1
            continue
        if previous is not None and previous[0] == row:
            if previous[1] != stats:
                restats.append((*stats, dataset, key))
                json_delta += json_bytes_in(stats)
            continue
        if previous is None:
            counts.added += 1
        else:
            counts.changed += 1
        upserts.append((dataset, key, *row, *stats))
        json_delta += json_bytes_in(stats)
    with store.transaction(conn):
        if restats:
            conn.executemany(STAT_UPDATE, restats)
        if not upserts and not deletes:
            _add_json_bytes(conn, dataset, json_delta)
            return
        version = conn.execute(
            "UPDATE datasets SET data_version = data_version + 1, json_bytes = json_bytes + ?"
            " WHERE id = ? RETURNING data_version",
            (json_delta, dataset),
        ).fetchall()[0][0]
        conn.executemany("DELETE FROM samples WHERE dataset = ? AND key = ?", deletes)
        conn.executemany(SAMPLE_UPSERT, [(*row, version) for row in upserts])


def write_batches(conn: sqlite3.Connection, dataset: str, results: list[CompactResult], counts: Counts,
                  origin: str | None = None) -> None:
    """write_results in KEYS_PER_COMMIT slices: one origin's sorted results, a transaction each."""
    for start in range(0, len(results), KEYS_PER_COMMIT):
        write_results(conn, dataset, results[start : start + KEYS_PER_COMMIT], counts, origin=origin)


_WRITTEN = (*STORED_COLUMNS, *STAT_COLUMNS, "data_version")
SAMPLE_INSERT = (f"INSERT INTO samples (dataset, key, {', '.join(_WRITTEN)}) "
                 f"VALUES ({', '.join('?' * (len(_WRITTEN) + 2))})")
SAMPLE_UPSERT = (SAMPLE_INSERT + " ON CONFLICT (dataset, key) DO UPDATE SET "
                 + ", ".join(f"{c} = excluded.{c}" for c in _WRITTEN))
STAT_UPDATE = (f"UPDATE samples SET {', '.join(f'{c} = ?' for c in STAT_COLUMNS)}"
               " WHERE dataset = ? AND key = ?")


def _add_json_bytes(conn: sqlite3.Connection, dataset: str, delta: int) -> None:
    if delta:  # NULL (not known) stays NULL: the next summary sums it
        conn.execute("UPDATE datasets SET json_bytes = json_bytes + ? WHERE id = ?", (delta, dataset))


def _rank(origin: str | None) -> tuple[int, str]:
    """Who owns a key that several origins hold: loose files, then shards in path order."""
    return (0, "") if origin is None else (1, origin)


def cached_json_bytes(conn: sqlite3.Connection, dataset: str) -> int:
    """json_bytes as every batch keeps it (write_results); summed once when it is not known."""
    stored = conn.execute("SELECT json_bytes FROM datasets WHERE id = ?", (dataset,)).fetchone()[0]
    if stored is not None:
        return int(stored)
    total = json_bytes(conn, dataset)
    with store.transaction(conn):
        conn.execute("UPDATE datasets SET json_bytes = ? WHERE id = ?", (total, dataset))
    return total


def json_bytes(conn: sqlite3.Connection, dataset: str) -> int:
    """The dataset's JSON bytes: one column of the sample rows, plus the rare extra spellings."""
    row = conn.execute(
        "SELECT coalesce(sum(json_size), 0) + (SELECT coalesce(sum(o.value ->> 1), 0)"
        " FROM samples AS s, json_each(s.other_files) AS o WHERE s.dataset = ?1"
        " AND s.other_files IS NOT NULL AND lower(o.value ->> 0) = 'json') FROM samples WHERE dataset = ?1",
        (dataset,),
    ).fetchone()
    return int(row[0])
