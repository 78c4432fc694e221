"""Diff the files a walk lists against the stored file records, into TEMP table scan_changes.

Memory stays flat in the number of files: the stored records are held as two sorted int64 arrays
(hash of path, hash of stat), the walk streams directory chunks, and the changes go to a temp table.
Files not in the stored records are not even stat-ed here; the readers stat what they read.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import stat as stat_module
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson

from indexer.ingest.walk import walk
from indexer.ingest.workers import process_pool

RACY_WINDOW_NS = 3_000_000_000
NEVER_MATCHES = -1  # stat_signature is never negative, so a racy record can never look unchanged
SNAPSHOT_PAGE = 65_536
PARALLEL_STAT_MIN = 20_000  # below this, starting worker processes costs more than it saves


def stat_signature(size: int, mtime_ns: int, ctime_ns: int, inode: int) -> int:
    """A 63-bit mix of the four stat fields, stored with each file record.

    Stable across processes and Python versions (unlike hash() of a tuple); each field is multiplied
    by an odd constant, so a change in any one field alone always changes the signature.
    """
    return (size * 0x9E3779B97F4A7C15 ^ mtime_ns * 0xC2B2AE3D27D4EB4F
            ^ ctime_ns * 0x165667B19E3779F9 ^ inode * 0x27D4EB2F165667C5) & 0x7FFF_FFFF_FFFF_FFFF


# One page of stored stat records in one walk of the table (rowid order, no index lookups):
# "path\0signature" of each JSON, then of each image, each joined by \0 (group_concat skips the
# NULLs of samples without one), the page's row count and its last id (the next page starts after).
SNAPSHOT_PAGE_SQL = """
SELECT group_concat(key || '.' || json_ext || char(0) || json_sig, char(0)),
       group_concat(key || '.' || image_ext || char(0) || image_sig, char(0)),
       count(*), max(id)
FROM (SELECT id, key, json_ext, json_sig, image_ext, image_sig FROM samples
      WHERE id > ? AND +dataset = ? ORDER BY id LIMIT ?)
"""


class Snapshot:
    """The stored file records of one dataset as sorted (path hash, stat signature) arrays."""

    def __init__(self, path_hashes: np.ndarray, signatures: np.ndarray) -> None:
        order = np.argsort(path_hashes, kind="stable")
        self.path_hashes = path_hashes[order]
        self.signatures = signatures[order]
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
        after = 0
        while True:
            page = conn.execute(SNAPSHOT_PAGE_SQL, (after, dataset, SNAPSHOT_PAGE)).fetchone()
            json_entries, image_entries, rows, after = page
            if not rows:
                break
            for entries in (json_entries, image_entries):
                if entries:
                    fields = entries.split("\0")
                    paths = fields[0::2]
                    hashes.append(np.fromiter(map(hash, paths), dtype=np.int64, count=len(paths)))
                    signatures.append(np.array(fields[1::2], dtype=np.int64))
        others = [(f"{key}.{ext}", sig) for key, files in conn.execute(
            "SELECT key, other_files FROM samples WHERE dataset = ? AND other_files IS NOT NULL", (dataset,))
            for ext, _size, _mtime_ns, sig in orjson.loads(files)]
        if others:
            hashes.append(np.fromiter((hash(path) for path, _ in others), dtype=np.int64, count=len(others)))
            signatures.append(np.array([sig for _, sig in others], dtype=np.int64))
        if not hashes:
            return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
        return cls(np.concatenate(hashes), np.concatenate(signatures))

    def lookup(self, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """For each path: whether a record exists, and its index."""
        wanted = np.fromiter((hash(p) for p in paths), dtype=np.int64, count=len(paths))
        if not len(self.path_hashes):
            return np.zeros(len(paths), dtype=bool), np.zeros(len(paths), dtype=np.int64)
        order = np.argsort(wanted)  # sorted probes walk the big array in order: far fewer cache misses
        index = np.empty(len(paths), dtype=np.int64)
        index[order] = np.searchsorted(self.path_hashes, wanted[order])
        np.minimum(index, len(self.path_hashes) - 1, out=index)
        return self.path_hashes[index] == wanted, index


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
    With several workers and a large stored snapshot, the stat calls run in worker processes
    while this process lists folders and looks paths up (stat is most of a no-change rerun).
    """
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS scan_changes (key TEXT, path TEXT, op TEXT)")
    conn.execute("DELETE FROM scan_changes")
    snapshot = Snapshot.load(conn, dataset)
    result = ScanResult()
    pending: list[tuple[str, str, str]] = []

    def flush() -> None:
        if pending:
            conn.executemany("INSERT INTO scan_changes VALUES (?, ?, ?)", pending)
            pending.clear()

    conn.execute("BEGIN")  # one temp-table transaction: no fsync per batch
    pool = process_pool(workers) if workers > 1 and len(snapshot) >= PARALLEL_STAT_MIN else None
    in_flight: collections.deque = collections.deque()
    try:
        for fd, prefix, names in walk(root, result.unreadable, result.bad_names, result.not_files,
                                      result.archives):
            paths = [prefix + name for name in names]
            known, index = snapshot.lookup(paths)
            if not known.all():
                for position in np.flatnonzero(~known).tolist():
                    path = paths[position]
                    pending.append((path[: path.rfind(".")], path, "U"))
                result.new += int(len(paths) - known.sum())
            if known.any():
                positions = np.flatnonzero(known)
                slots = index[positions]
                snapshot.found[slots] = True
                known_names = [names[p] for p in positions.tolist()]
                if pool is None:
                    signatures = stat_signatures(fd, known_names)
                    result.modified += _queue_modified(signatures, paths, positions, slots, snapshot,
                                                       pending)
                else:
                    future = pool.submit(stat_signatures_in, os.path.join(root, prefix), known_names)
                    in_flight.append((future, paths, positions, slots))
                    while len(in_flight) > 2 * workers:
                        result.modified += _collect(in_flight.popleft(), snapshot, pending)
            result.files_seen += len(paths)
            if len(pending) >= 10000:
                flush()
            if on_progress:
                on_progress(len(paths))
        while in_flight:
            result.modified += _collect(in_flight.popleft(), snapshot, pending)
        flush()
        _find_deleted(conn, dataset, root, snapshot, result, pending)
        flush()
        _drop_shard_indexes(conn, result.archives)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return result


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
        signatures[j] = (
            stat_signature(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            if stat_module.S_ISREG(st.st_mode) else NEVER_MATCHES
        )
    return signatures


def stat_signatures_in(folder: str, names: list[str]) -> np.ndarray:
    """stat_signatures for a worker process, which opens the folder itself."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return stat_signatures(fd, names)
    finally:
        os.close(fd)


def _collect(item: tuple, snapshot: Snapshot, pending: list[tuple[str, str, str]]) -> int:
    future, paths, positions, slots = item
    return _queue_modified(future.result(), paths, positions, slots, snapshot, pending)


def _queue_modified(
    signatures: np.ndarray,
    paths: list[str],
    positions: np.ndarray,
    slots: np.ndarray,
    snapshot: Snapshot,
    pending: list[tuple[str, str, str]],
) -> int:
    """Queue the files whose stat signature differs from the stored one."""
    modified = np.flatnonzero(signatures != snapshot.signatures[slots])
    for j in modified.tolist():
        path = paths[int(positions[j])]
        pending.append((path[: path.rfind(".")], path, "U"))
    return len(modified)


def _find_deleted(
    conn: sqlite3.Connection,
    dataset: str,
    root: str,
    snapshot: Snapshot,
    result: ScanResult,
    pending: list[tuple[str, str, str]],
) -> None:
    """Stored files the walk did not see are deleted, unless their folder could not be listed."""
    if snapshot.found.all():
        return
    skipped = tuple(prefix for prefix, _reason in result.unreadable)
    cursor = conn.execute("SELECT key, path FROM files WHERE dataset = ?", (dataset,))
    while rows := cursor.fetchmany(65536):
        known, index = snapshot.lookup([row[1] for row in rows])
        for (key, path), is_known, slot in zip(rows, known, index, strict=True):
            if is_known and snapshot.found[slot]:
                continue
            if path.startswith(skipped):
                continue
            if os.path.lexists(os.path.join(root, path)):
                pending.append((key, path, "U"))  # a hash collision hid it: re-read, to be safe
                result.modified += 1
            else:
                pending.append((key, path, "D"))
                result.deleted += 1
