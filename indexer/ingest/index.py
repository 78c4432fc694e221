"""The `index` stage: scan a root, then re-read what changed through the write path (pipeline.py).

Orchestration only: which keys to read (the scan's diff, or the paths `watch` was told about), the
tar shards in place (shards.py), the search index, and the run summary.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from indexer import store
from indexer.db.counts import sample_count
from indexer.db.fts import sync_search_index
from indexer.errors import IndexerError
from indexer.ingest.apply import apply_changes
from indexer.ingest.derived import build_derived, defer_derived
from indexer.ingest.engines import ENGINES, default_readers, run_report
from indexer.ingest.pipeline import KEYS_PER_COMMIT
from indexer.ingest.recorder import SHOWN_LIMIT, Recorder
from indexer.ingest.remote import RemoteRoot, is_remote, needs_shard_list, redact, shard_list_root
from indexer.ingest.remote_index import index_remote
from indexer.ingest.rows import Counts, ReadSettings
from indexer.ingest.run import resolve_root, writer_run
from indexer.ingest.scan import ScanResult, changes_table, scan
from indexer.ingest.shards import (
    ShardCounts,
    is_compressed_shard_name,
    is_shard_name,
    local_shards,
    read_local_in_order,
    update_shards,
)
from indexer.ingest.walk import is_utf8, split_sample_path
from indexer.ingest.workers import default_workers
from indexer.progress import bar


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
    shard_list: str | os.PathLike[str] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict:
    """Bring the index of `root` up to date and return the run summary (the --json object).

    root may be a folder, or a remote root (`s3://bucket/prefix`, `hf://datasets/ORG/NAME`); with
    shard_list (a file of https:// shard URLs) root is not needed. workers then counts objects read
    at once (remote_index.py), not processes."""
    if engine not in ENGINES:
        raise IndexerError(f"--engine {engine!r}: use {' or '.join(ENGINES)}")
    if shard_list is None and needs_shard_list(str(root)):
        raise IndexerError(f"{redact(str(root))}: HTTP cannot list a folder; put the shard URLs in a file,"
                           " one a line, and pass --shard-list FILE (without ROOT)")
    if shard_list is not None or is_remote(root):
        # one dataset whether or not the URL ends in a slash
        remote = shard_list_root(shard_list) if shard_list is not None else RemoteRoot(str(root).rstrip("/"))
        summary = index_remote(os.fspath(db_path), remote, dataset_id=dataset_id, workers=workers,
                               verify_images=verify_images, progress=progress, engine=engine,
                               ray_address=ray_address)
        summary["db_bytes"] = database_bytes(db_path)
        return summary
    started = time.monotonic()
    root_path = resolve_root(root)
    with writer_run(db_path, root_path, command, dataset_id) as run:
        summary = update_dataset(
            run.conn, run.dataset, root_path,
            workers=workers or default_readers(engine, ray_address, default_workers()),
            verify_images=verify_images, progress=progress, keys_per_commit=keys_per_commit,
            engine=engine, ray_address=ray_address,
        )
        summary.update(run_id=run.id, seconds=round(time.monotonic() - started, 3))
        run.finish(summary)
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
    engine: str = "local",
    ray_address: str | None = None,
) -> dict:
    """Scan root, re-read every changed key and record the results (library entry point)."""
    settings = ReadSettings(str(root), time.time_ns(), verify_images, workers, engine, ray_address)
    recorder = Recorder(conn, dataset)
    before = sample_count(conn, dataset)
    with bar(progress, desc="scan", unit=" files") as scan_bar:
        scanned = scan(conn, dataset, str(root), on_progress=scan_bar.update, workers=workers)
    apply_changes(recorder, settings, progress=progress, keys_per_commit=keys_per_commit)
    shard_counts = _update_shards(recorder, root, scanned, settings, first_contact=not before)
    sync_search_index(conn)  # captions of new/changed samples into the FTS, in bulk
    build_started = time.perf_counter()
    built = build_derived(conn, progress)  # what a bulk write deferred, or a stopped run left
    build_seconds = time.perf_counter() - build_started
    tars = [p for p in scanned.archives if is_shard_name(p)]
    return {
        "dataset": dataset,
        "root": str(root),
        **recorder.summary(),
        "samples_before": before,
        "files_seen": scanned.files_seen,
        "shards": shard_counts.summary(),
        "unreadable": [f"{prefix or '.'}: {reason}" for prefix, reason in scanned.unreadable],
        "bad_names": scanned.bad_names[:SHOWN_LIMIT],
        "bad_names_count": len(scanned.bad_names),
        "notes": no_samples_notes(root, scanned.files_seen, tars, shard_counts.compressed),
        "not_files": scanned.not_files[:SHOWN_LIMIT],
        "not_files_count": len(scanned.not_files),
        "readers": workers,
        **shard_counts.unread_summary(),
        **run_report(engine),
        "derived": {"built": built, "seconds": round(build_seconds, 3)},
    }


def _update_shards(recorder: Recorder, root: Path, scanned: ScanResult, settings: ReadSettings,
                   first_contact: bool) -> ShardCounts:
    """The tar shards the scan found (or that are recorded and may be gone), up to date."""
    tars = [p for p in scanned.archives if is_shard_name(p)]
    compressed = [p for p in scanned.archives if is_compressed_shard_name(p)]
    conn, dataset = recorder.conn, recorder.dataset
    recorded = conn.execute("SELECT 1 FROM tar_shards WHERE dataset = ? LIMIT 1", (dataset,)).fetchone()
    if not tars and not recorded:
        return ShardCounts(compressed=compressed)
    if tars and first_contact:
        defer_derived(conn)  # a first contact with shards is a bulk write
    skipped = tuple(prefix for prefix, _reason in scanned.unreadable if prefix)
    shard_counts = update_shards(recorder, local_shards(root, tars),
                                 lambda pending: read_local_in_order(pending, settings),
                                 skipped_prefixes=skipped)
    shard_counts.compressed = compressed
    return shard_counts


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
    """Re-index the samples that own the given root-relative paths (`watch`'s batches).

    Each path that exists is re-read with its key's other files; one that is gone is dropped from
    its key. Other files of those keys keep their stored records. Non-sample paths are ignored.
    """
    settings = ReadSettings(str(root), time.time_ns(), verify_images, workers)
    rows = []
    for path in dict.fromkeys(paths):
        parts = split_sample_path(path)
        if parts is None or not is_utf8(path):  # a scan reports bad names; events skip them
            continue
        exists = os.path.isfile(os.path.join(root, path))
        if exists and path.endswith(".json") and os.path.isfile(os.path.join(root, path[:-5] + ".tar")):
            continue  # a shard's webshart index (scan.shard_index_path), not a sample
        rows.append((parts[0], path, "U" if exists else "D"))
    with store.transaction(conn, "DEFERRED"):
        changes_table(conn)
        conn.executemany("INSERT INTO scan_changes VALUES (?, ?, ?)", rows)
    recorder = Recorder(conn, dataset)
    apply_changes(recorder, settings, progress=False)
    sync_search_index(conn)  # captions of new/changed samples into the FTS, in bulk
    build_derived(conn)  # a batch big enough to be a bulk write deferred them
    return recorder.counts


def database_bytes(db_path: str | os.PathLike[str]) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(os.fspath(db_path) + suffix)
    return total
