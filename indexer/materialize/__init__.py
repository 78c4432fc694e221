"""The `materialize` stage: the selected samples of a dataset indexed in place (tar shards, a
bucket, the Hub, https shards, or a local folder) copied into a local folder, where a trainer that
wants file paths finds them, without downloading the rest.

DIR is laid out as `tar xf` / `indexer extract` would lay it out (a sample's files at
`DIR/<key>.<ext>`), becomes a local dataset of its own in the same database, and is recorded as it
is written, so a following `indexer index DIR` reads nothing and every export that hands trainers
paths serves the subset. A sample DIR already holds (right size, recorded as it is) is skipped,
so a rerun after a kill fetches only what is missing.

Modules: plan.py (the source rows, the files' names checked by extract's rules, what DIR lacks),
fetch.py (bytes by range or whole, checked: size, md5), place.py (into place through extract's
sinks, recorded through the recorder); this one runs them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from indexer.db.fts import sync_search_index
from indexer.errors import IndexerError
from indexer.extract import prepare_root, reserved_paths
from indexer.ingest.recorder import SHOWN_LIMIT, Recorder
from indexer.ingest.remote import RemoteRoot, shard_list_root
from indexer.ingest.run import writer_run
from indexer.ingest.workers import LARGE_TASKS_AHEAD, map_in_order, thread_pool
from indexer.materialize.fetch import Fetched, LocalReader, Reader, RemoteReader
from indexer.materialize.place import Target, opened_target, place_batch
from indexer.materialize.plan import (
    Source,
    Wanted,
    WantedFile,
    allowed,
    missing_files,
    select_source,
    target_records,
)
from indexer.progress import bar

REMOTE_WORKERS = 16  # samples fetched at once from a remote source: enough to hide ~20 ms round trips
LOCAL_WORKERS = 4
SAMPLES_PER_BATCH = 256  # written, then recorded in one transaction
BATCH_BYTES = 64 << 20  # or fewer, when their files weigh this much (DALLE-3 images: ~2 MB each)


def materialize(db_path: str | os.PathLike[str], to: str | os.PathLike[str], *, dataset_id: str | None = None,
                where: str | None = None, workers: int | None = None, progress: bool = False,
                shard_list: str | os.PathLike[str] | None = None, as_id: str | None = None) -> dict:
    """Copy the selected samples of dataset `dataset_id` (the only other one when None) into `to`
    and record them as dataset `as_id` (default: the folder's name); returns the run summary.

    Samples that could not be fetched or checked (`failed`) and files whose names are refused
    (`refused`) are reported, never raised: the caller picks the exit code. A bad option, an
    unreadable source listing or an unwritable DIR raises IndexerError."""
    started = time.monotonic()
    target = Path(to).expanduser().resolve()
    source = select_source(db_path, dataset_id, where, target, as_id)
    reader = _reader(source, shard_list)
    root = prepare_root(to)
    with writer_run(db_path, root, "materialize", as_id) as run:
        summary = _materialize(run.conn, run.dataset, root, source, reader, reserved_paths(db_path, root),
                               workers=workers or (REMOTE_WORKERS if source.remote else LOCAL_WORKERS),
                               progress=progress)
        summary.update(run_id=run.id, seconds=round(time.monotonic() - started, 3))
        note = _note(summary)
        run.finish(summary, status="failed" if summary["error"] else "done", error=note)
    if summary["error"]:
        raise IndexerError(summary["error"] + "; what was placed before is recorded")
    return summary


materialize_samples = materialize  # its name at the package root (indexer.materialize is this package)


def _reader(source: Source, shard_list: str | os.PathLike[str] | None) -> Reader:
    """How the source's bytes are read (a remote source is listed here, before DIR is touched)."""
    if not source.remote:
        if shard_list is not None:
            raise IndexerError(f"--shard-list is for a dataset indexed from https URLs; {source.dataset!r} is"
                               f" the folder {source.root}")
        if not os.path.isdir(source.root):
            raise IndexerError(f"the source dataset's root {source.root} is not there any more: mount it,"
                               " or index the data where it now is")
        return LocalReader(source)
    if source.root.startswith(("https://", "http://")):
        if shard_list is None:
            raise IndexerError(f"dataset {source.dataset!r} was indexed from a shard list ({source.root}):"
                               " give the same --shard-list FILE (the URLs are not stored)")
        remote = shard_list_root(shard_list)
        if remote.display != source.root:
            raise IndexerError(f"--shard-list {shard_list} holds URLs under {remote.display}, but dataset"
                               f" {source.dataset!r} was indexed from {source.root}: give its shard list")
        return RemoteReader(source, remote)
    return RemoteReader(source, RemoteRoot(source.root))


def _materialize(conn: sqlite3.Connection, dataset: str, root: Path, source: Source, reader: Reader,
                 reserved: frozenset[str], *, workers: int, progress: bool) -> dict:
    recorder = Recorder(conn, dataset)
    totals = {"fetched": 0, "files_written": 0, "bytes_written": 0, "requests": 0, "fetched_bytes": 0}
    failed: list[dict] = []
    refused: list[dict] = []
    todo, in_place = _todo(root, source.wanted, reserved, target_records(conn, dataset), refused)
    error = None
    scan_start_ns = time.time_ns()
    with opened_target(root) as target, bar(progress, desc="materialize", unit=" samples",
                                            total=len(todo)) as sample_bar:
        fetched_all = map_in_order(reader.fetch, todo, workers, workers * LARGE_TASKS_AHEAD,
                                   recorder.counts.waited, pool_of=thread_pool)
        for batch in _batches(fetched_all):
            error = _place(target, recorder, batch, scan_start_ns, totals, failed, refused)
            sample_bar.update(len(batch))
            if error:
                break
    sync_search_index(conn)
    return {"dataset": dataset, "root": str(root), "source": source.dataset, "source_root": source.root,
            "selected": len(source.wanted), "in_place": in_place, **totals,
            "failed": failed[:SHOWN_LIMIT], "failed_count": len(failed),
            "refused": refused[:SHOWN_LIMIT], "refused_count": len(refused), "error": error,
            "readers": workers, **recorder.summary()}


def _todo(root: Path, wanted: list[Wanted], reserved: frozenset[str], recorded: dict[str, int | None],
          refused: list[dict]) -> tuple[list[tuple[Wanted, tuple[WantedFile, ...]]], int]:
    """(sample, the files DIR lacks) for each sample to fetch, and how many DIR holds whole."""
    todo = []
    in_place = 0
    for sample in wanted:
        sample, refusals = allowed(sample, reserved)
        refused += refusals
        missing = missing_files(root, sample, recorded)
        if missing:
            todo.append((sample, missing))
        elif sample.files:
            in_place += 1
    return todo, in_place


def _place(target: Target, recorder: Recorder, batch: list[Fetched], scan_start_ns: int, totals: dict,
           failed: list[dict], refused: list[dict]) -> str | None:
    """Place a batch's fetched samples and count them; returns why DIR could not be written."""
    good = [fetched for fetched in batch if fetched.error is None]
    failed += [{"key": fetched.wanted.key, "error": fetched.error} for fetched in batch if fetched.error]
    placed = place_batch(target, recorder, good, scan_start_ns)
    refused += placed.refusals
    files = set(placed.files)
    totals["fetched"] += sum(1 for fetched in good if files.issuperset(fetched.data))
    totals["files_written"] += len(files)
    totals["bytes_written"] += sum(len(data) for fetched in good for name, data in fetched.data.items()
                                   if name in files)
    totals["requests"] += sum(fetched.requests for fetched in batch)
    totals["fetched_bytes"] += sum(fetched.bytes for fetched in batch)
    return placed.error


def _batches(items: Iterable[Fetched]) -> Iterator[list[Fetched]]:
    """Fetched samples in batches of SAMPLES_PER_BATCH, or of BATCH_BYTES of files: what is in
    memory at once."""
    batch: list[Fetched] = []
    weight = 0
    for item in items:
        batch.append(item)
        weight += sum(map(len, item.data.values()))
        if len(batch) >= SAMPLES_PER_BATCH or weight >= BATCH_BYTES:
            yield batch
            batch, weight = [], 0
    if batch:
        yield batch


def _note(summary: dict) -> str | None:
    notes = []
    if summary["failed_count"]:
        notes.append(f"{summary['failed_count']} sample(s) could not be fetched")
    if summary["refused_count"]:
        notes.append(f"{summary['refused_count']} file(s) refused")
    if summary["error"]:
        notes.append(summary["error"])
    return "; ".join(notes) or None
