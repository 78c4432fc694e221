"""Diff the files a walk lists against the stored file records, into TEMP table scan_changes.

Memory stays flat in the number of files: the stored records are held as two sorted int64 arrays
(hash of path, hash of stat), the walk streams directory chunks, and the changes go to a temp table.
Files not in the stored records are not even stat-ed here; the readers stat what they read.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import sqlite3
import stat as stat_module
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson

from indexer.ingest.change import NEVER_MATCHES, current_signature
from indexer.ingest.records import other_files, recorded_files
from indexer.ingest.walk import walk
from indexer.ingest.workers import LARGE_TASKS_AHEAD, process_pool

SNAPSHOT_PAGE = 65_536
PARALLEL_STAT_MIN = 20_000  # below this, starting worker processes costs more than it saves
CHANGES_PER_INSERT = 10_000  # scan_changes rows buffered before one executemany


# One page of stored stat records in one walk of the table (rowid order, no index lookups):
# "path\0signature\0row id" of each JSON, then of each image, each joined by \0 (group_concat
# skips the NULLs of samples without one, and of shard members; a record without a signature gets
# NEVER_MATCHES, so it is read again), the page's row count and its last id (the next page starts
# after).
SNAPSHOT_PAGE_SQL = """
SELECT group_concat(iif(shard IS NULL, key || '.' || json_ext || char(0) || coalesce(json_sig, -1)
                         || char(0) || id, NULL), char(0)),
       group_concat(iif(shard IS NULL, key || '.' || image_ext || char(0) || coalesce(image_sig, -1)
                         || char(0) || id, NULL), char(0)),
       count(*), max(id)
FROM (SELECT id, key, json_ext, json_sig, image_ext, image_sig, shard FROM samples
      WHERE id > ? AND +dataset = ? ORDER BY id LIMIT ?)
"""


class Snapshot:
    """The stored file records of one dataset as sorted (path hash, stat signature, sample row id)
    arrays; `found` marks the records a walk saw, so the rest name their rows directly."""

    def __init__(self, path_hashes: np.ndarray, signatures: np.ndarray, row_ids: np.ndarray) -> None:
        """Sorts the arrays in place (one temporary at a time: a rerun's peak memory at 1M samples
        is mostly these arrays)."""
        order = np.argsort(path_hashes, kind="stable")
        for array in (path_hashes, signatures, row_ids):
            array[:] = array[order]
        del order
        self.path_hashes, self.signatures, self.row_ids = path_hashes, signatures, row_ids
        self.found = np.zeros(len(path_hashes), dtype=bool)

    def __len__(self) -> int:
        return len(self.path_hashes)

    @classmethod
    def load(cls, conn: sqlite3.Connection, dataset: str) -> Snapshot:
        """Read the records a page of samples at a time, each page as ONE string from group_concat.

        Two million rows fetched as Python tuples cost most of a no-change rerun at 1M samples;
        one string per page split in C is ~3x cheaper.
        Racy records are stored with signature NEVER_MATCHES already.
        """
        hashes: list[np.ndarray] = []
        signatures: list[np.ndarray] = []
        row_ids: list[np.ndarray] = []
        after = 0
        while True:
            page = conn.execute(SNAPSHOT_PAGE_SQL, (after, dataset, SNAPSHOT_PAGE)).fetchone()
            json_entries, image_entries, rows, after = page
            if not rows:
                break
            for entries in (json_entries, image_entries):
                if entries:
                    fields = entries.split("\0")
                    paths = fields[0::3]
                    hashes.append(np.fromiter(map(hash, paths), dtype=np.int64, count=len(paths)))
                    signatures.append(np.array(fields[1::3], dtype=np.int64))
                    row_ids.append(np.array(fields[2::3], dtype=np.int64))
        others = [(f"{key}.{entry.ext}", entry.sig, row_id) for row_id, key, files in conn.execute(
            "SELECT id, key, other_files FROM samples INDEXED BY samples_other_files"
            " WHERE dataset = ? AND other_files IS NOT NULL"
            " AND shard IS NULL", (dataset,))
            for entry in other_files(files)]
        if others:
            hashes.append(np.fromiter((hash(path) for path, _, _ in others), dtype=np.int64,
                                      count=len(others)))
            signatures.append(np.array([sig for _, sig, _ in others], dtype=np.int64))
            row_ids.append(np.array([row_id for _, _, row_id in others], dtype=np.int64))
        if not hashes:
            empty = np.empty(0, dtype=np.int64)
            return cls(empty, empty, empty)
        return cls(_joined(hashes), _joined(signatures), _joined(row_ids))

    def lookup(self, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """For each path: whether a record exists, and its index."""
        if not len(self.path_hashes):  # a first run: nothing to look up
            return np.zeros(len(paths), dtype=bool), np.zeros(len(paths), dtype=np.int64)
        wanted = np.fromiter(map(hash, paths), dtype=np.int64, count=len(paths))
        order = np.argsort(wanted)  # sorted probes walk the big array in order: far fewer cache misses
        index = np.empty(len(paths), dtype=np.int64)
        index[order] = np.searchsorted(self.path_hashes, wanted[order])
        np.minimum(index, len(self.path_hashes) - 1, out=index)
        return self.path_hashes[index] == wanted, index


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The parts as one array; the list is emptied, so the parts can be freed at once."""
    joined = np.concatenate(parts)
    parts.clear()
    return joined


@dataclass
class ScanResult:
    files_seen: int = 0
    new: int = 0
    modified: int = 0
    deleted: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (folder prefix, reason)
    bad_names: list[str] = field(default_factory=list)  # paths that are not valid UTF-8, skipped
    not_files: list[str] = field(default_factory=list)  # "path: what it is" for FIFOs, folders...
    archives: list[str] = field(default_factory=list)  # tar shards (and compressed tars) found

    @property
    def changed_files(self) -> int:
        return self.new + self.modified + self.deleted



def scan(
    conn: sqlite3.Connection,
    dataset: str,
    root: str,
    *,
    on_progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> ScanResult:
    """Diff the files under root against the stored records into TEMP table scan_changes.

    scan_changes(key, path, op) gets op 'U' for new or modified files and 'D' for deleted ones.
    With several workers and a large stored snapshot, the lookups and stat calls run in reader
    processes that inherit the snapshot by fork, while this process lists folders (stat is most
    of a no-change rerun, and this process would otherwise bound it).
    """
    global _FORKED_SNAPSHOT
    changes_table(conn)
    snapshot = Snapshot.load(conn, dataset)
    result = ScanResult()
    pending: list[tuple[str, str, str]] = []
    conn.execute("BEGIN")  # one temp-table transaction: no fsync per batch
    pool = None
    if workers > 1 and len(snapshot) >= PARALLEL_STAT_MIN:
        _FORKED_SNAPSHOT = snapshot  # the readers fork after this: they share it, never pickled
        pool = process_pool(workers)
    try:
        _walk_and_diff(conn, root, snapshot, result, pending, pool, workers, on_progress)
        _find_deleted(conn, dataset, root, snapshot, result, pending)
        _flush(conn, pending)
        _drop_shard_indexes(conn, result.archives)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            _FORKED_SNAPSHOT = None
    return result


def _flush(conn: sqlite3.Connection, pending: list[tuple[str, str, str]]) -> None:
    if pending:
        conn.executemany("INSERT INTO scan_changes VALUES (?, ?, ?)", pending)
        pending.clear()


def _walk_and_diff(conn: sqlite3.Connection, root: str, snapshot: Snapshot, result: ScanResult,
                   pending: list[tuple[str, str, str]], pool: cf.ProcessPoolExecutor | None, workers: int,
                   on_progress: Callable[[int], None] | None) -> None:
    """List every folder and diff its names against the snapshot (here, or in the stat readers
    when there is a pool), the changes buffered into scan_changes."""
    in_flight: collections.deque = collections.deque()

    def record(diff: Diff) -> None:
        slots, changed, new = diff
        snapshot.found[slots] = True
        pending.extend((path[: path.rfind(".")], path, "U") for path in changed)
        result.new += new
        result.modified += len(changed) - new

    for fd, prefix, names in walk(root, result.unreadable, result.bad_names, result.not_files,
                                  result.archives):
        if pool is None:
            record(diff_names(snapshot, fd, prefix, names))
        else:
            in_flight.append(pool.submit(diff_names_in, os.path.join(root, prefix), prefix, names))
            while len(in_flight) > LARGE_TASKS_AHEAD * workers:
                record(in_flight.popleft().result())
        result.files_seen += len(names)
        if len(pending) >= CHANGES_PER_INSERT:
            _flush(conn, pending)
        if on_progress:
            on_progress(len(names))
    while in_flight:
        record(in_flight.popleft().result())
    _flush(conn, pending)


def changes_table(conn: sqlite3.Connection) -> None:
    """An empty TEMP table scan_changes(key, path, op): what apply.apply_changes reads again."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS scan_changes (key TEXT, path TEXT, op TEXT)")
    conn.execute("DELETE FROM scan_changes")


# What diff_names finds in a chunk of one folder's names: the snapshot slots of the records it
# saw, the paths to read (new ones first), and how many of those are new.
Diff = tuple[np.ndarray, list[str], int]
_FORKED_SNAPSHOT: Snapshot | None = None  # the snapshot the stat readers inherit by fork


def diff_names(snapshot: Snapshot, fd: int, prefix: str, names: list[str]) -> Diff:
    """Look a chunk of names up, and stat the known ones (new files are not stat-ed: the readers
    stat what they read)."""
    paths = [prefix + name for name in names]
    if not len(snapshot):  # a first run: every file is new, nothing to stat
        return np.empty(0, dtype=np.int64), paths, len(paths)
    known, index = snapshot.lookup(paths)
    changed = [paths[position] for position in np.flatnonzero(~known).tolist()]
    new = len(changed)
    positions = np.flatnonzero(known)
    slots = index[positions]
    if len(positions):
        signatures = stat_signatures(fd, [names[position] for position in positions.tolist()])
        modified = np.flatnonzero(signatures != snapshot.signatures[slots])
        changed += [paths[position] for position in positions[modified].tolist()]
    return slots, changed, new


def diff_names_in(folder: str, prefix: str, names: list[str]) -> Diff:
    """diff_names in a reader process, against the snapshot it inherited, in the folder it opens."""
    assert _FORKED_SNAPSHOT is not None, "diff_names_in runs in readers forked by scan()"
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return diff_names(_FORKED_SNAPSHOT, fd, prefix, names)
    finally:
        os.close(fd)


def shard_index_path(archive: str) -> str | None:
    """`X.json` beside `X.tar` is the shard's webshart index (`export webshart` writes it), not a
    sample's JSON."""
    return archive[:-4] + ".json" if archive.lower().endswith(".tar") else None


def _drop_shard_indexes(conn: sqlite3.Connection, archives: list[str]) -> None:
    """Shard indexes are never samples: drop them from the changes, and from the records if an
    earlier run (before the shard was there) took one for a sample's JSON."""
    indexes = [path for path in map(shard_index_path, archives) if path]
    if indexes:
        conn.executemany("DELETE FROM scan_changes WHERE path = ?", [(path,) for path in indexes])
        conn.executemany("INSERT INTO scan_changes VALUES (?, ?, 'D')",
                         [(path[: path.rfind(".")], path) for path in indexes])


def stat_signatures(fd: int, names: list[str]) -> np.ndarray:
    """Stat signatures of names in the folder open as fd (NEVER_MATCHES: gone, or not a file)."""
    signatures = np.empty(len(names), dtype=np.int64)
    stat = os.stat
    for j, name in enumerate(names):
        try:
            st = stat(name, dir_fd=fd)
        except OSError:
            signatures[j] = NEVER_MATCHES  # vanished since listing: the re-read decides
            continue
        signatures[j] = current_signature(st) if stat_module.S_ISREG(st.st_mode) else NEVER_MATCHES
    return signatures


def _find_deleted(
    conn: sqlite3.Connection,
    dataset: str,
    root: str,
    snapshot: Snapshot,
    result: ScanResult,
    pending: list[tuple[str, str, str]],
) -> None:
    """Stored files the walk did not see are deleted, unless their folder could not be listed.

    Only the rows of records the walk missed are fetched (their ids are in the snapshot), so a
    rerun that lost a few files does not read every record again.
    """
    if snapshot.found.all():
        return
    skipped = tuple(prefix for prefix, _reason in result.unreadable)
    missing_rows = np.unique(snapshot.row_ids[~snapshot.found]).tolist()
    for start in range(0, len(missing_rows), SNAPSHOT_PAGE):
        page = orjson.dumps(missing_rows[start : start + SNAPSHOT_PAGE]).decode()
        candidates = [
            (key, path)
            for key, json_ext, image_ext, others in conn.execute(
                "SELECT key, json_ext, image_ext, other_files FROM samples"
                " WHERE id IN (SELECT value FROM json_each(?)) AND shard IS NULL", (page,))
            for path in recorded_files(key, json_ext, None, image_ext, None, others)
        ]
        known, index = snapshot.lookup([path for _key, path in candidates])
        for (key, path), is_known, slot in zip(candidates, known.tolist(), index.tolist(), strict=True):
            if (is_known and snapshot.found[slot]) or path.startswith(skipped):
                continue
            if os.path.lexists(os.path.join(root, path)):
                pending.append((key, path, "U"))  # a hash collision hid it: re-read, to be safe
                result.modified += 1
            else:
                pending.append((key, path, "D"))
                result.deleted += 1
