"""The `index` stage: scan, read what changed in worker processes, write in sorted batches.

Crash safety comes from a key's stat records living in its sample row (schema 009): a run killed
before a batch commits leaves those files unrecorded, so the next run sees them again.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from indexer import store
from indexer.db.counts import problem_counts
from indexer.db.counts import sample_count as _sample_count
from indexer.db.fts import sync_search_index
from indexer.errors import IndexerError
from indexer.ingest.derived import defer_derived
from indexer.ingest.read import FileRecord, SampleRecord, read_sample
from indexer.ingest.scan import NEVER_MATCHES, scan, stat_signature
from indexer.ingest.shards import ShardCounts, is_compressed_shard_name, is_shard_name, update_shards
from indexer.ingest.walk import split_sample_path
from indexer.ingest.workers import process_pool
from indexer.progress import bar

BULK_MIN_KEYS = 20_000  # a run that rewrites this many samples (and most of them) defers indexes
KEYS_PER_TASK = 256
KEYS_PER_COMMIT = 4096  # ~10k rows a transaction: fast, and a kill loses little work

# The samples columns a read decides, in the order of a CompactResult's sample row.
STORED_COLUMNS = ("image_ext", "json_ext", "width", "height", "size_from", "status", "error", "warning",
                  "meta")
# The stat record of a sample's files, stored in its row (schema 009). A racy file (too young to
# trust) gets signature -1, which never matches, so the next run reads it again.
STAT_COLUMNS = ("json_size", "json_sig", "image_size", "image_mtime_ns", "image_sig", "other_files",
                "shard", "json_offset", "image_offset")  # the last three: members of a tar shard
RACY_SIGNATURE = NEVER_MATCHES
SHARD_AT = STAT_COLUMNS.index("shard")
# What a reader sends back per key: (key, content row (STORED_COLUMNS) or None when no file is
# left, stat row (STAT_COLUMNS), files read). Flat tuples of str/int only: they pickle several
# times cheaper than the reader's objects, and go to executemany as they are.
CompactResult = tuple[str, tuple | None, tuple | None, int]


def compact(key: str, sample: SampleRecord | None, files: list[FileRecord], files_read: int) -> CompactResult:
    """A read result in the form write_results stores (computed in the reader processes)."""
    if sample is None:
        return key, None, None, files_read
    json_stat = image_stat = None
    others = []
    for path, size, mtime_ns, ctime_ns, inode, racy in files:
        sig = RACY_SIGNATURE if racy else stat_signature(size, mtime_ns, ctime_ns, inode)
        if path == sample.json:
            json_stat = (size, sig)
        elif path == sample.image:
            image_stat = (size, mtime_ns, sig)
        else:
            others.append([path[len(key) + 1 :], size, mtime_ns, sig])
    image, json_path, *rest = sample
    cut = len(key) + 1
    row = (image[cut:] if image else None, json_path[cut:] if json_path else None, *rest)
    stats = (*(json_stat or (None, None)), *(image_stat or (None, None, None)),
             orjson.dumps(sorted(others)).decode() if others else None, None, None, None)
    return key, row, stats, files_read


@dataclass
class Counts:
    added: int = 0
    changed: int = 0
    removed: int = 0
    files_read: int = 0
    waited_s: float = 0.0  # time this (writer) process spent waiting for reader results
    # keys two origins hold: (key, origin that lost it, origin that owns it); see write_results
    conflicts: list[tuple[str, str | None, str | None]] = field(default_factory=list)


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
    tars = [p for p in scanned.archives if is_shard_name(p)]
    compressed = [p for p in scanned.archives if is_compressed_shard_name(p)]
    shard_counts = ShardCounts(compressed=compressed)
    if tars or conn.execute("SELECT 1 FROM tar_shards WHERE dataset = ? LIMIT 1", (dataset,)).fetchone():
        if tars and not before:
            defer_derived(conn)  # a first contact with shards is a bulk write
        shard_counts = update_shards(
            conn, dataset, root, tars, workers=workers, verify_images=verify_images, counts=counts,
            write_results=write_results,
            skipped_prefixes=tuple(prefix for prefix, _reason in scanned.unreadable if prefix))
        shard_counts.compressed = compressed
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
        "json_bytes": cached_json_bytes(conn, dataset,
                                        recount=bool(scanned.changed_files or shard_counts.read
                                                     or shard_counts.removed)),
        "shards": shard_counts.summary(),
        "unreadable": [f"{prefix or '.'}: {reason}" for prefix, reason in scanned.unreadable],
        "bad_names": scanned.bad_names[:100],
        "bad_names_count": len(scanned.bad_names),
        "notes": no_samples_notes(root, scanned.files_seen, tars, compressed),
        "not_files": scanned.not_files[:100],
        "not_files_count": len(scanned.not_files),
        "readers": workers,
        # share of the update's wall time the writer process was busy (not waiting for readers):
        # near 1.0, the single writer bounds the run; well below, the readers do
        "writer_busy": round(1 - counts.waited_s / wall, 3) if wall > 0 else None,
    }


def no_samples_notes(root: Path, files_seen: int, tars: list[str], compressed: list[str]) -> list[str]:
    """What to tell a user whose ROOT holds no sample file, or shards that cannot be read in place."""
    notes = []
    if not files_seen and not tars:
        notes.append(f"no sample files (.json, .png, .jpg, .jpeg, .webp) found under {root}")
    if compressed:
        shown = ", ".join(sorted(compressed)[:3])
        notes.append(f"compressed tar shards ({shown}) cannot be read in place (offsets into a compressed"
                     f" stream mean nothing): decompress them (e.g. gunzip) and index again, or unpack"
                     f" them with `indexer extract {root}/SHARD --to DIR` and index DIR")
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
        if exists and path.endswith(".json") and os.path.isfile(os.path.join(root, path[:-5] + ".tar")):
            continue  # a shard's webshart index (scan.shard_index_path), not a sample
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
    # A dataset with no stored sample yet (a first run) has nothing to merge with or replace.
    fresh = conn.execute("SELECT 1 FROM samples WHERE dataset = ? LIMIT 1", (dataset,)).fetchone() is None
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


# A read task: (key, its current paths joined by NUL) per key. One string a key pickles several
# times cheaper than a list of paths, and the reader splits it.
Task = list[tuple[str, str]]


def _tasks(conn: sqlite3.Connection, dataset: str, keys_per_task: int, fresh: bool = False) -> Iterator[Task]:
    """Group scan_changes by key (sorted, so writes hit the B-tree in order) into task lists.

    SQLite groups and sorts the changes into one row a key, read back in pages with fetchall: a
    cursor left open across the batches' write transactions would pin this connection's read
    snapshot (SQLite keeps it for the open statement), and the next BEGIN IMMEDIATE after any other
    process wrote would fail at once with "database is locked" (a stale snapshot bypasses the busy
    timeout).
    """
    conn.execute("DROP TABLE IF EXISTS temp.scan_order")
    conn.execute(
        "CREATE TEMP TABLE scan_order AS SELECT key, group_concat(op || path, char(0)) AS changes"
        " FROM scan_changes GROUP BY key ORDER BY key"
    )
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
    found: dict[str, dict[str, int | None]] = collections.defaultdict(dict)
    for key, json_ext, json_sig, image_ext, image_sig, others in conn.execute(
        "SELECT key, json_ext, json_sig, image_ext, image_sig, other_files FROM samples WHERE dataset = ?"
        " AND key IN (SELECT value FROM json_each(?)) AND shard IS NULL",
        (dataset, orjson.dumps(keys).decode()),
    ):
        if json_ext is not None:
            found[key][f"{key}.{json_ext}"] = json_sig
        if image_ext is not None:
            found[key][f"{key}.{image_ext}"] = image_sig
        for ext, _size, _mtime_ns, sig in orjson.loads(others) if others else ():
            found[key][f"{key}.{ext}"] = sig
    return found


def _read_task(task: Task, root: str, scan_start_ns: int, verify_images: bool) -> list[CompactResult]:
    return [compact(key, *read_sample(root, key, paths.split("\0") if paths else [], scan_start_ns,
                                      verify_images))
            for key, paths in task]


def _run_tasks(
    tasks: Iterable[Task],
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
    origin: str | None = None,
) -> None:
    """Record a batch of keys (content and stat records in one row per sample), in one transaction.

    origin: where the batch's files are (a shard's path, or None for loose files). A key two
    origins hold belongs to loose files first, then to the shard first in path order, whatever
    order they were seen in (so an incremental index equals a fresh one); each such meeting is
    noted in counts.conflicts for shards.py to record.

    A batch that changes samples moves the dataset's data_version in the same transaction, so an
    export that read the data before this commit is never taken for one made after it.

    fresh: no key of the batch has stored rows yet (a first run), so nothing is looked up or deleted.
    """
    keys = [key for key, *_ in results]
    width = len(STORED_COLUMNS)
    old = {} if fresh else {
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
        if row is None:
            if previous is not None:
                deletes.append((dataset, key))
                counts.removed += 1
            continue
        if previous is not None and previous[0] == row:
            if previous[1] != stats:
                restats.append((*stats, dataset, key))
            continue
        if previous is None:
            counts.added += 1
        else:
            counts.changed += 1
        upserts.append((dataset, key, *row, *stats))
    with store.transaction(conn):
        if restats:
            conn.executemany(STAT_UPDATE, restats)
        if not upserts and not deletes:
            return
        version = conn.execute(
            "UPDATE datasets SET data_version = data_version + 1 WHERE id = ? RETURNING data_version",
            (dataset,),
        ).fetchall()[0][0]
        conn.executemany("DELETE FROM samples WHERE dataset = ? AND key = ?", deletes)
        conn.executemany(SAMPLE_INSERT if fresh else SAMPLE_UPSERT, [(*row, version) for row in upserts])


_WRITTEN = (*STORED_COLUMNS, *STAT_COLUMNS, "data_version")
SAMPLE_INSERT = (f"INSERT INTO samples (dataset, key, {', '.join(_WRITTEN)}) "
                 f"VALUES ({', '.join('?' * (len(_WRITTEN) + 2))})")
SAMPLE_UPSERT = (SAMPLE_INSERT + " ON CONFLICT (dataset, key) DO UPDATE SET "
                 + ", ".join(f"{c} = excluded.{c}" for c in _WRITTEN))
STAT_UPDATE = (f"UPDATE samples SET {', '.join(f'{c} = ?' for c in STAT_COLUMNS)}"
               " WHERE dataset = ? AND key = ?")


def _rank(origin: str | None) -> tuple[int, str]:
    """Who owns a key that several origins hold: loose files, then shards in path order."""
    return (0, "") if origin is None else (1, origin)


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
    """The dataset's JSON bytes: one column of the sample rows, plus the rare extra spellings."""
    row = conn.execute(
        "SELECT coalesce(sum(json_size), 0) + (SELECT coalesce(sum(o.value ->> 1), 0)"
        " FROM samples AS s, json_each(s.other_files) AS o WHERE s.dataset = ?1"
        " AND s.other_files IS NOT NULL AND lower(o.value ->> 0) = 'json') FROM samples WHERE dataset = ?1",
        (dataset,),
    ).fetchone()
    return int(row[0])


def database_bytes(db_path: str | os.PathLike[str]) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(os.fspath(db_path) + suffix)
    return total
