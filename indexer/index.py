"""The `index` stage: scan, read what changed in worker processes, write in sorted batches.

Crash safety comes from writing a key's file records and its sample row in the same transaction:
a run killed before a batch commits leaves those files unrecorded, so the next run sees them again.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from indexer import store
from indexer.db.counts import problem_counts
from indexer.db.counts import sample_count as _sample_count
from indexer.db.fts import sync_search_index
from indexer.derived import defer_derived
from indexer.errors import IndexerError
from indexer.progress import bar
from indexer.read import FileRecord, SampleRecord, read_sample
from indexer.scan import STAGING_PREFIX, scan, split_sample_path, stat_signature
from indexer.workers import process_pool

BULK_MIN_KEYS = 20_000  # a run that rewrites this many samples (and most of them) defers indexes
KEYS_PER_TASK = 256
KEYS_PER_COMMIT = 4096  # ~10k rows a transaction: fast, and a kill loses little work

# The samples columns a read decides, in the order of a CompactResult's sample row.
STORED_COLUMNS = ("image_ext", "json_ext", "width", "height", "size_from", "status", "error", "warning",
                  "meta")
# What a reader sends back per key: (key, sample row or None when no file is left, file rows
# (ext, size, mtime_ns, ctime_ns, inode, racy, sig), files read). Flat tuples of str/int only:
# they pickle several times cheaper than the reader's objects, and go to executemany as they are.
CompactResult = tuple[str, tuple | None, list[tuple], int]


def compact(key: str, sample: SampleRecord | None, files: list[FileRecord], files_read: int) -> CompactResult:
    """A read result in the form write_results stores (computed in the reader processes)."""
    cut = len(key) + 1
    file_rows = [(path[cut:], size, mtime_ns, ctime_ns, inode, racy,
                  stat_signature(size, mtime_ns, ctime_ns, inode))
                 for path, size, mtime_ns, ctime_ns, inode, racy in files]
    if sample is None:
        return key, None, file_rows, files_read
    image, json_path, *rest = sample
    row = (image[cut:] if image else None, json_path[cut:] if json_path else None, *rest)
    return key, row, file_rows, files_read


@dataclass
class Counts:
    added: int = 0
    changed: int = 0
    removed: int = 0
    files_read: int = 0
    waited_s: float = 0.0  # time this (writer) process spent waiting for reader results


def resolve_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise IndexerError(f"ROOT {path} does not exist: check the path")
    if not path.is_dir():
        raise IndexerError(f"ROOT {path} is not a folder: pass the folder that holds the samples")
    return path.resolve()


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def index_root(
    db_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    workers: int | None = None,
    verify_images: bool = False,
    progress: bool = False,
    command: str = "index",
    keys_per_commit: int = KEYS_PER_COMMIT,
) -> dict:
    """Bring the index of `root` up to date and return the run summary (the --json object)."""
    started = time.monotonic()
    root_path = resolve_root(root)
    conn = store.connect(db_path)
    try:
        with store.writer_lock(db_path, command):
            dataset = store.ensure_dataset(conn, dataset_id, root_path)
            run_id = store.start_run(conn, dataset, command)
            try:
                summary = update_dataset(
                    conn, dataset, root_path, workers=workers or default_workers(),
                    verify_images=verify_images, progress=progress, keys_per_commit=keys_per_commit,
                )
            except BaseException as exc:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                store.finish_run(conn, run_id, {}, status=status, error=str(exc) or status)
                raise
            summary.update(run_id=run_id, seconds=round(time.monotonic() - started, 3))
            store.finish_run(conn, run_id, summary)
    finally:
        conn.close()  # the last connection to close folds the WAL into the main file
    summary["db_bytes"] = database_bytes(db_path)
    return summary


def update_dataset(
    conn: sqlite3.Connection,
    dataset: str,
    root: Path,
    *,
    workers: int,
    verify_images: bool = False,
    progress: bool = False,
    keys_per_commit: int = KEYS_PER_COMMIT,
) -> dict:
    """Scan root, re-read every changed key and record the results (library entry point)."""
    scan_start_ns = time.time_ns()
    started = time.perf_counter()
    before = _sample_count(conn, dataset)
    with bar(progress, desc="scan", unit=" files") as scan_bar:
        scanned = scan(conn, dataset, str(root), on_progress=scan_bar.update, workers=workers)
    counts = apply_changes(conn, dataset, str(root), scan_start_ns, workers=workers,
                           verify_images=verify_images, progress=progress,
                           keys_per_commit=keys_per_commit)
    sync_search_index(conn)  # captions of new/changed samples into the FTS, in bulk
    after = _sample_count(conn, dataset)
    wall = time.perf_counter() - started
    return {
        "dataset": dataset,
        "root": str(root),
        "added": counts.added,
        "changed": counts.changed,
        "removed": counts.removed,
        "unchanged": after - counts.added - counts.changed,
        "samples": after,
        "samples_before": before,
        "problems": problem_counts(conn, dataset),
        "files_seen": scanned.files_seen,
        "files_read": counts.files_read,
        "json_bytes": cached_json_bytes(conn, dataset, recount=bool(scanned.changed_files)),
        "unreadable": [f"{prefix or '.'}: {reason}" for prefix, reason in scanned.unreadable],
        "bad_names": scanned.bad_names[:100],
        "bad_names_count": len(scanned.bad_names),
        "notes": no_samples_notes(root) if not scanned.files_seen else [],
        "not_files": scanned.not_files[:100],
        "not_files_count": len(scanned.not_files),
        "readers": workers,
        # share of the update's wall time the writer process was busy (not waiting for readers):
        # near 1.0, the single writer bounds the run; well below, the readers do
        "writer_busy": round(1 - counts.waited_s / wall, 3) if wall > 0 else None,
    }


SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def no_samples_notes(root: Path, shown: int = 3) -> list[str]:
    """What to tell a user whose ROOT holds no sample file at all (often: the shards, unextracted)."""
    shards: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(STAGING_PREFIX)]
        shards += [os.path.relpath(os.path.join(folder, n), root) for n in names
                   if n.lower().endswith(SHARD_SUFFIXES)]
        if len(shards) >= shown:
            break
    notes = [f"no sample files (.json, .png, .jpg, .jpeg, .webp) found under {root}"]
    if shards:
        notes.append(f"it holds tar shards ({', '.join(sorted(shards)[:shown])}): unpack and index them"
                     f" with `indexer extract {root}/*.tar --to DIR`, then use DIR")
    return notes


def update_paths(
    conn: sqlite3.Connection,
    dataset: str,
    root: Path,
    paths: Iterable[str],
    *,
    workers: int = 1,
    verify_images: bool = False,
) -> Counts:
    """Re-index the samples that own the given root-relative paths (for `watch` and `extract`).

    Each path that exists is re-read with its key's other files; one that is gone is dropped from
    its key. Other files of those keys keep their stored records. Non-sample paths are ignored.
    """
    scan_start_ns = time.time_ns()
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS scan_changes (key TEXT, path TEXT, op TEXT)")
    rows = []
    for path in dict.fromkeys(paths):
        parts = split_sample_path(path)
        if parts is None or not _is_utf8(path):  # a scan reports bad names; events skip them
            continue
        exists = os.path.isfile(os.path.join(root, path))
        rows.append((parts[0], path, "U" if exists else "D"))
    with store.transaction(conn, "DEFERRED"):
        conn.execute("DELETE FROM scan_changes")
        conn.executemany("INSERT INTO scan_changes VALUES (?, ?, ?)", rows)
    counts = apply_changes(conn, dataset, str(root), scan_start_ns, workers=workers,
                           verify_images=verify_images, progress=False)
    sync_search_index(conn)  # captions of new/changed samples into the FTS, in bulk
    return counts


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    total = conn.execute("SELECT count(DISTINCT key) FROM scan_changes").fetchone()[0]
    if not total:
        return counts
    if total >= BULK_MIN_KEYS and total * 2 >= _sample_count(conn, dataset):
        defer_derived(conn)  # built again on first use, off the critical path
    # A dataset with no stored file yet (a first run) has nothing to merge with or replace.
    fresh = conn.execute("SELECT 1 FROM files WHERE dataset = ? LIMIT 1", (dataset,)).fetchone() is None
    tasks = _tasks(conn, dataset, min(KEYS_PER_TASK, keys_per_commit), fresh)
    with bar(progress, desc="read", unit=" samples", total=total) as read_bar:
        pending: list[CompactResult] = []
        for results in _run_tasks(tasks, root, scan_start_ns, verify_images, workers, counts):
            pending.extend(results)
            read_bar.update(len(results))
            if len(pending) >= keys_per_commit:
                write_results(conn, dataset, pending, counts, fresh=fresh)
                pending = []
        if pending:
            write_results(conn, dataset, pending, counts, fresh=fresh)
    return counts


def _tasks(
    conn: sqlite3.Connection, dataset: str, keys_per_task: int, fresh: bool = False
) -> Iterator[list[tuple[str, list[str]]]]:
    """Group scan_changes by key (sorted, so writes hit the B-tree in order) into task lists.

    The changes are copied once in key order and read back in pages with fetchall: a cursor left
    open across the batches' write transactions would pin this connection's read snapshot (SQLite
    keeps it for the open statement), and the next BEGIN IMMEDIATE after any other process wrote
    would fail at once with "database is locked" (a stale snapshot bypasses the busy timeout).
    """
    conn.execute("DROP TABLE IF EXISTS temp.scan_order")
    conn.execute("CREATE TEMP TABLE scan_order AS SELECT key, path, op FROM scan_changes ORDER BY key, path")
    changes: dict[str, list[tuple[str, str]]] = {}
    after = 0
    while rows := conn.execute(
        "SELECT rowid, key, path, op FROM scan_order WHERE rowid > ? ORDER BY rowid LIMIT ?",
        (after, keys_per_task * 4),
    ).fetchall():
        after = rows[-1][0]
        for _rowid, key, path, op in rows:
            changes.setdefault(key, []).append((path, op))
        if len(changes) > keys_per_task:
            last = rows[-1][1]  # the last key may continue in the next page
            ready = {k: v for k, v in changes.items() if k != last}
            changes = {last: changes[last]}
            yield _current_paths(conn, dataset, ready, fresh)
    if changes:
        yield _current_paths(conn, dataset, changes, fresh)
    conn.execute("DROP TABLE IF EXISTS temp.scan_order")


def _current_paths(
    conn: sqlite3.Connection, dataset: str, changes: dict[str, list[tuple[str, str]]],
    fresh: bool = False,
) -> list[tuple[str, list[str]]]:
    """Each key's files now: the stored ones, minus deletions, plus new or modified ones."""
    if fresh:
        return [(key, sorted(path for path, _op in ops)) for key, ops in changes.items()]
    stored: dict[str, set[str]] = collections.defaultdict(set)
    for key, path in conn.execute(
        "SELECT key, path FROM files WHERE dataset = ? AND key IN (SELECT value FROM json_each(?))",
        (dataset, orjson.dumps(list(changes)).decode()),
    ):
        stored[key].add(path)
    tasks = []
    for key, ops in changes.items():
        paths = stored.get(key, set())
        for path, op in ops:
            if op == "D":
                paths.discard(path)
            else:
                paths.add(path)
        tasks.append((key, sorted(paths)))
    return tasks


def _read_task(
    task: list[tuple[str, list[str]]], root: str, scan_start_ns: int, verify_images: bool
) -> list[CompactResult]:
    return [compact(key, *read_sample(root, key, paths, scan_start_ns, verify_images))
            for key, paths in task]


def _run_tasks(
    tasks: Iterable[list[tuple[str, list[str]]]],
    root: str,
    scan_start_ns: int,
    verify_images: bool,
    workers: int,
    counts: Counts,
) -> Iterator[list[CompactResult]]:
    """Read tasks in worker processes, yielding results in submission (key) order.

    The time spent waiting for a result is added to counts.waited_s: what is left of the wall
    time is the writer's own work, which tells whether readers or the writer bound a run.
    """
    if workers <= 1:
        for task in tasks:
            yield _read_task(task, root, scan_start_ns, verify_images)
        return
    with process_pool(workers) as pool:
        in_flight: collections.deque[cf.Future] = collections.deque()
        for task in tasks:
            in_flight.append(pool.submit(_read_task, task, root, scan_start_ns, verify_images))
            if len(in_flight) >= workers * 4:
                yield _wait(in_flight.popleft(), counts)
        while in_flight:
            yield _wait(in_flight.popleft(), counts)


def _wait(future: cf.Future, counts: Counts) -> list[CompactResult]:
    started = time.perf_counter()
    result = future.result()
    counts.waited_s += time.perf_counter() - started
    return result


def write_results(
    conn: sqlite3.Connection,
    dataset: str,
    results: list[CompactResult],
    counts: Counts,
    fresh: bool = False,
) -> None:
    """Record a batch of keys: file rows and sample rows together, in one transaction.

    A batch that changes samples moves the dataset's data_version in the same transaction, so an
    export that read the data before this commit is never taken for one made after it.

    fresh: no key of the batch has stored rows yet (a first run), so nothing is looked up or deleted.
    """
    keys = [key for key, *_ in results]
    old = {} if fresh else {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            f"SELECT key, {', '.join(STORED_COLUMNS)} FROM samples "
            "WHERE dataset = ? AND key IN (SELECT value FROM json_each(?))",
            (dataset, orjson.dumps(keys).decode()),
        )
    }
    upserts = []
    deletes = []
    file_rows = []
    for key, row, files, files_read in results:
        counts.files_read += files_read
        file_rows += [(dataset, key, *record) for record in files]
        previous = old.get(key)
        if row is None:
            if previous is not None:
                deletes.append((dataset, key))
                counts.removed += 1
            continue
        if previous == row:
            continue
        if previous is None:
            counts.added += 1
        else:
            counts.changed += 1
        upserts.append((dataset, key, *row))
    with store.transaction(conn):
        if not fresh:
            conn.executemany(
                "DELETE FROM files WHERE dataset = ? AND key = ?", [(dataset, k) for k in keys]
            )
        conn.executemany(
            "INSERT INTO files (dataset, key, ext, size, mtime_ns, ctime_ns, inode, racy, sig)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            file_rows,
        )
        if not upserts and not deletes:
            return
        version = conn.execute(
            "UPDATE datasets SET data_version = data_version + 1 WHERE id = ? RETURNING data_version",
            (dataset,),
        ).fetchall()[0][0]
        conn.executemany("DELETE FROM samples WHERE dataset = ? AND key = ?", deletes)
        conn.executemany(SAMPLE_INSERT if fresh else SAMPLE_UPSERT, [(*row, version) for row in upserts])


SAMPLE_INSERT = (f"INSERT INTO samples (dataset, key, {', '.join(STORED_COLUMNS)}, data_version) "
                 f"VALUES ({', '.join('?' * (len(STORED_COLUMNS) + 3))})")
SAMPLE_UPSERT = (SAMPLE_INSERT + " ON CONFLICT (dataset, key) DO UPDATE SET "
                 + ", ".join(f"{c} = excluded.{c}" for c in (*STORED_COLUMNS, "data_version")))


def cached_json_bytes(conn: sqlite3.Connection, dataset: str, recount: bool) -> int:
    """json_bytes, summed again only when files changed (the sum reads every file record)."""
    stored = conn.execute("SELECT json_bytes FROM datasets WHERE id = ?", (dataset,)).fetchone()[0]
    if stored is not None and not recount:
        return int(stored)
    total = json_bytes(conn, dataset)
    with store.transaction(conn):
        conn.execute("UPDATE datasets SET json_bytes = ? WHERE id = ?", (total, dataset))
    return total


def json_bytes(conn: sqlite3.Connection, dataset: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(size), 0) FROM files WHERE dataset = ? AND lower(ext) = 'json'",
        (dataset,),
    ).fetchone()
    return int(row[0])


def database_bytes(db_path: str | os.PathLike[str]) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(os.fspath(db_path) + suffix)
    return total
