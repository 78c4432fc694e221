"""The ingest pipeline's one interface for writers: record read results from an origin, record a
reader's scratch batch, and the run's counts and summary.

Every writer (index over loose files, tar shards in place, `extract`, `watch`, and any new source
or engine) hands its readers' results to a Recorder; how they are merged, who owns a key two
origins hold, when data_version moves and what a summary counts live behind it (pipeline.py,
bulk.py), so a new reader plugs in here instead of copying a pipeline.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from typing import NamedTuple

import orjson

from indexer import store
from indexer.db.counts import problem_counts, sample_count
from indexer.ingest.pipeline import KEYS_PER_COMMIT, cached_json_bytes, stored_files, write_batches
from indexer.ingest.records import SCRATCH_COLUMNS, STORED_COLUMNS, json_bytes_in
from indexer.ingest.rows import CompactResult, Counts
from indexer.ingest.virtual_columns import insert_rows

SHOWN_LIMIT = 100  # entries of a long list a run summary shows (its full count beside it)
# A scratch database is read once, front to back, by the copy: mapped, its pages are not copied
# into the page cache first (~0.15 s of 2 s at 300k rows). SQLite maps no more than the file.
SCRATCH_MMAP_BYTES = 1 << 30


class ScratchBatch(NamedTuple):
    """A reader's rows in a scratch database (bulk.write_scratch): new keys are copied in with one
    INSERT ... SELECT; keys already recorded are merged like any result."""

    path: str
    keys: int  # keys the reader was given
    rows: int  # sample rows it wrote
    files_read: int
    json_bytes: int  # JSON bytes of those rows


Completion = Callable[[list[CompactResult]], list[CompactResult]]


class Recorder:
    """One run's writes into one dataset, through one connection (the single writer)."""

    def __init__(self, conn: sqlite3.Connection, dataset: str, counts: Counts | None = None) -> None:
        self.conn = conn
        self.dataset = dataset
        self.counts = counts or Counts()
        self.started = time.perf_counter()

    def record(self, results: list[CompactResult], origin: str | None = None) -> None:
        """Record sorted results read from origin (a shard's path, None for loose files), in
        transactions of KEYS_PER_COMMIT keys."""
        write_batches(self.conn, self.dataset, results, self.counts, origin=origin)

    def stored_files(self, keys: list[str]) -> dict[str, dict[str, int | None]]:
        """The loose files recorded for these keys, {key: {path: stored signature}}."""
        return stored_files(self.conn, self.dataset, keys)

    def record_scratch(self, batch: ScratchBatch, *, fresh: bool = False,
                       complete: Completion | None = None) -> None:
        """Copy a scratch batch in and remove its file. fresh: the caller knows no key of it is
        recorded yet (a first run), so nothing is looked up. complete(results) may re-read the
        keys already recorded (with files the batch did not bring) before they are merged."""
        self.counts.files_read += batch.files_read
        if not batch.rows:
            _remove(batch.path)
            return
        self.conn.execute("ATTACH DATABASE ? AS scratch", (batch.path,))
        try:
            self.conn.execute(f"PRAGMA scratch.mmap_size = {SCRATCH_MMAP_BYTES}")
            known = [] if fresh else _recorded_rows(self.conn, self.dataset)
            if len(known) < batch.rows:
                json_total = batch.json_bytes - sum(json_bytes_in(result[2]) for result in known)
                _copy_new_rows(self.conn, self.dataset, json_total, [result[0] for result in known])
                self.counts.added += batch.rows - len(known)
            for start in range(0, len(known), KEYS_PER_COMMIT):
                results = known[start : start + KEYS_PER_COMMIT]
                self.record(complete(results) if complete else results)
        finally:
            self.conn.execute("DETACH DATABASE scratch")
            _remove(batch.path)

    def summary(self) -> dict:
        """The counts every writing run reports (its own figures go beside them)."""
        samples = sample_count(self.conn, self.dataset)
        return {
            "added": self.counts.added,
            "changed": self.counts.changed,
            "removed": self.counts.removed,
            "unchanged": samples - self.counts.added - self.counts.changed,
            "samples": samples,
            "problems": problem_counts(self.conn, self.dataset),
            "files_read": self.counts.files_read,
            "json_bytes": cached_json_bytes(self.conn, self.dataset),
            "writer_busy": self.busy_share(),
        }

    def busy_share(self) -> float | None:
        """The share of the time since this recorder started that its (writer) process was not
        waiting for a reader's result (counts.waited_s): near 1.0, the single writer bounds the
        run; well below, the readers do. Inline reading (one worker) is the writer's own work."""
        wall = time.perf_counter() - self.started
        return round(max(0.0, 1 - self.counts.waited_s / wall), 3) if wall > 0 else None


def _recorded_rows(conn: sqlite3.Connection, dataset: str) -> list[CompactResult]:
    """The attached scratch rows whose keys already have a sample row, as results, in key order."""
    width = len(STORED_COLUMNS)
    return [(row[0], row[1 : 1 + width], row[1 + width :], 0) for row in conn.execute(
        f"SELECT {', '.join(SCRATCH_COLUMNS)} FROM scratch.rows AS r WHERE EXISTS"
        " (SELECT 1 FROM samples AS s WHERE s.dataset = ? AND s.key = r.key) ORDER BY r.key", (dataset,))]


def _copy_new_rows(conn: sqlite3.Connection, dataset: str, json_total: int, skip_keys: list[str]) -> None:
    """Copy the rows of the attached `scratch` database into samples, but for skip_keys (keys that
    already have a row: merged as results), moving data_version and json_bytes (json_total: the
    JSON bytes of the rows copied) in the same transaction."""
    with store.transaction(conn):
        version = conn.execute(
            "UPDATE datasets SET data_version = data_version + 1,"
            " json_bytes = json_bytes + ? WHERE id = ? RETURNING data_version",  # NULL: not known
            (json_total, dataset),
        ).fetchall()[0][0]
        skip = " WHERE key NOT IN (SELECT value FROM json_each(?))" if skip_keys else ""
        insert_rows(
            conn,
            f"INSERT INTO samples (dataset, {', '.join(SCRATCH_COLUMNS)}, data_version)"
            f" SELECT ?, {', '.join(SCRATCH_COLUMNS)}, ? FROM scratch.rows{skip} ORDER BY rowid",
            (dataset, version, orjson.dumps(skip_keys).decode()) if skip_keys else (dataset, version),
        )


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
