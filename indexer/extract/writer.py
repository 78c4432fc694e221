"""The writer side of `extract`: each shard's row in `shards`, its samples through the ingest's
one interface for writers (ingest/recorder.py), and the run summary."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import orjson

from indexer import store
from indexer.db.fts import sync_search_index
from indexer.extract.worker import Result, ShardOutcome, ShardTask
from indexer.ingest.change import FileRecord
from indexer.ingest.pipeline import KEYS_PER_COMMIT
from indexer.ingest.read import read_sample
from indexer.ingest.recorder import Recorder
from indexer.ingest.records import StatRow, recorded_files
from indexer.ingest.rows import CompactResult, compact
from indexer.ingest.walk import SAMPLE_EXTENSIONS


def run_error(summary: dict) -> str | None:
    notes = []
    if summary["failures"]:
        notes.append(f"{len(summary['failures'])} shard(s) failed")
    if summary["refused"]:
        notes.append(f"{summary['refused']} member(s) refused")
    return "; ".join(notes) or None


def begin_shard(conn: sqlite3.Connection, dataset: str, task: ShardTask) -> None:
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO shards (dataset, path, size, mtime_ns, status, staging, started_at)"
            " VALUES (?, ?, ?, ?, 'extracting', ?, ?) ON CONFLICT (dataset, path) DO UPDATE SET"
            " size = excluded.size, mtime_ns = excluded.mtime_ns, status = 'extracting',"
            " staging = excluded.staging, started_at = excluded.started_at, members = NULL,"
            " refused = NULL, refusals = NULL, error = NULL, finished_at = NULL",
            (dataset, task.path, task.size, task.mtime_ns, task.staging, store.now_iso()),
        )


def record_shard(recorder: Recorder, root: Path, outcome: ShardOutcome, scan_start_ns: int) -> None:
    """Record a shard's samples in sorted batches, then mark the shard finished (or failed)."""
    conn = recorder.conn
    if outcome.scratch is not None:
        # keys already recorded (a shard extracted again, a key two shards share) are re-read
        # with their other recorded files before they are merged
        recorder.record_scratch(outcome.scratch, complete=lambda results: [
            _completed(str(root), result, files, scan_start_ns)
            for result, files in _with_stored(recorder, results)])
    results = outcome.results
    for start in range(0, len(results), KEYS_PER_COMMIT):
        batch = with_partners(recorder, str(root), results[start : start + KEYS_PER_COMMIT], scan_start_ns)
        recorder.record([compact(*result) for result in batch])
    # Captions into the full-text index now: a key split across shards is written again by a later
    # shard, and the search triggers expect every sample to be synced before it changes again.
    sync_search_index(conn)
    with store.transaction(conn):
        conn.execute(
            "UPDATE shards SET status = ?, members = ?, refused = ?, refusals = ?, error = ?,"
            " finished_at = ? WHERE dataset = ? AND path = ?",
            ("failed" if outcome.error else "finished", outcome.members, len(outcome.refusals),
             orjson.dumps(outcome.refusals).decode(), outcome.error, store.now_iso(), recorder.dataset,
             outcome.path),
        )


def _with_stored(recorder: Recorder, results: list[CompactResult]
                 ) -> list[tuple[CompactResult, dict[str, int | None]]]:
    stored = recorder.stored_files([result[0] for result in results])
    return [(result, stored.get(result[0], {})) for result in results]


def _completed(root: str, result: CompactResult, stored: dict[str, int | None],
               scan_start_ns: int) -> CompactResult:
    """A scratch row of a key already recorded, as a result; re-read with the key's other
    recorded files when it has some the shard did not bring (as with_partners does)."""
    key, content, stats, _read = result
    assert content is not None and stats is not None
    own = set(recorded_files(key, content[1], None, content[0], None, StatRow._make(stats).other_files))
    extra = set(stored) - own
    if not extra:
        return result
    sample, reread, read_count = read_sample(root, key, sorted(own | extra), scan_start_ns)
    return compact(key, sample, [_keep_known(record, own, stored) for record in reread], read_count)


def with_partners(recorder: Recorder, root: str, results: list[Result], scan_start_ns: int) -> list[Result]:
    """Complete keys whose other files came from elsewhere (another shard, or already in the root).

    write_results replaces a key's whole stat record, so a key is re-read with every file it has:
    the recorded ones, and, when the shard brought only its JSON or only its image, a partner
    already on disk. Pairs inside one shard (the webdataset norm) need none of this.
    """
    stored = recorder.stored_files([result[0] for result in results])
    completed: list[Result] = []
    for key, sample, files, files_read in results:
        own = {record.path for record in files}
        extra = set(stored.get(key, ())) - own
        if sample is None or sample.json is None or sample.image is None:
            extra.update(path for path in _partner_paths(key) if path not in own
                         and os.path.lexists(os.path.join(root, path)))
        if not extra:
            completed.append((key, sample, files, files_read))
            continue
        sample, reread, read_count = read_sample(root, key, sorted(own | extra), scan_start_ns)
        completed.append((key, sample, [_keep_known(r, own, stored.get(key, {})) for r in reread],
                          files_read + read_count))
    return completed


def _partner_paths(key: str) -> list[str]:
    return [f"{key}.{ext}" for ext in sorted(SAMPLE_EXTENSIONS)]


def _keep_known(record: FileRecord, own: set[str], stored: dict[str, int | None]) -> FileRecord:
    """Files this shard wrote are not racy; a stored file that did not change stays trusted (a
    racy one is stored with a signature that never matches, so it keeps being re-checked)."""
    if record.path in own or stored.get(record.path) == record.trusted().signature:
        return record.trusted()
    return record


def run_summary(recorder: Recorder, root: Path, shard_paths: list[Path], skipped: list[str],
                outcomes: list[ShardOutcome]) -> dict:
    refusals = [{"shard": o.path, "member": member, "reason": reason}
                for o in outcomes for member, reason in o.refusals]
    failures = [{"shard": o.path, "error": o.error} for o in outcomes if o.error]
    return {
        "dataset": recorder.dataset,
        "root": str(root),
        "shards": len(shard_paths),
        "shards_done": sum(1 for o in outcomes if not o.error),
        "shards_skipped": len(skipped),
        "shards_failed": len(failures),
        "skipped": skipped,
        "members": sum(o.members for o in outcomes),
        "bytes": sum(o.bytes for o in outcomes),
        "refused": len(refusals),
        "refusals": refusals,
        "failures": failures,
        **recorder.summary(),
    }
