"""The one write path of the ingest: record batches of read results in sorted order.

Which origin owns a key, when a sample counts as added, changed or removed, and when data_version
moves are decided here, for every writer (through recorder.Recorder, their one interface):

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
from dataclasses import dataclass, field

import orjson

from indexer import store
from indexer.ingest.records import STAT_COLUMNS, STORED_COLUMNS, json_bytes_in, recorded_files
from indexer.ingest.rows import SHARD_AT, CompactResult, Counts

__all__ = ["KEYS_PER_COMMIT", "CompactResult", "Counts", "cached_json_bytes", "json_bytes", "stored_files",
           "write_batches", "write_results"]

KEYS_PER_COMMIT = 4096  # ~10k rows a transaction: fast, and a kill loses little work


def stored_files(conn: sqlite3.Connection, dataset: str, keys: list[str]) -> dict[str, dict[str, int | None]]:
    """The loose files recorded for these keys, {key: {path: stat signature}}, straight from the
    sample rows: the `files` view cannot push an IN list into its UNION (it would scan them all)."""
    return {row[0]: recorded_files(*row) for row in conn.execute(
        "SELECT key, json_ext, json_sig, image_ext, image_sig, other_files FROM samples WHERE dataset = ?"
        " AND key IN (SELECT value FROM json_each(?)) AND shard IS NULL",
        (dataset, orjson.dumps(keys).decode()),
    )}


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
    width = len(STORED_COLUMNS)
    old = {
        row[0]: (row[1 : width + 1], row[width + 1 :])
        for row in conn.execute(
            f"SELECT key, {', '.join(STORED_COLUMNS + STAT_COLUMNS)} FROM samples "
            "WHERE dataset = ? AND key IN (SELECT value FROM json_each(?))",
            (dataset, orjson.dumps([result[0] for result in results]).decode()),
        )
    }
    _apply(conn, dataset, plan_batch(results, old, origin, counts))


@dataclass
class BatchPlan:
    """What one batch changes: rows to write, keys to delete, stat records to refresh (same content,
    files touched: no new data_version), and the change of datasets.json_bytes."""

    upserts: list[tuple] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    restats: list[tuple] = field(default_factory=list)
    json_delta: int = 0


def plan_batch(results: list[CompactResult], old: dict[str, tuple[tuple, tuple]], origin: str | None,
               counts: Counts) -> BatchPlan:
    """The pure decision of a batch: results against the stored (content, stats) of their keys."""
    plan = BatchPlan()
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
            plan.json_delta -= json_bytes_in(previous[1])
        if row is None:
            if previous is not None:
                plan.deletes.append(key)
                counts.removed += 1
            continue
        if previous is not None and previous[0] == row:
            if previous[1] != stats:
                plan.restats.append((*stats, key))
                plan.json_delta += json_bytes_in(stats)
            continue
        if previous is None:
            counts.added += 1
        else:
            counts.changed += 1
        plan.upserts.append((key, *row, *stats))
        plan.json_delta += json_bytes_in(stats)
    return plan


def _apply(conn: sqlite3.Connection, dataset: str, plan: BatchPlan) -> None:
    """Write a planned batch in one transaction (data_version moves only if samples change)."""
    with store.transaction(conn):
        if plan.restats:
            conn.executemany(STAT_UPDATE, [(*stats, dataset, key) for *stats, key in plan.restats])
        if not plan.upserts and not plan.deletes:
            _add_json_bytes(conn, dataset, plan.json_delta)
            return
        version = conn.execute(
            "UPDATE datasets SET data_version = data_version + 1, json_bytes = json_bytes + ?"
            " WHERE id = ? RETURNING data_version",
            (plan.json_delta, dataset),
        ).fetchall()[0][0]
        conn.executemany("DELETE FROM samples WHERE dataset = ? AND key = ?",
                         [(dataset, key) for key in plan.deletes])
        conn.executemany(SAMPLE_UPSERT, [(dataset, *row, version) for row in plan.upserts])


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
