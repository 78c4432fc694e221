"""The `materialize` stage: the selected samples of a dataset indexed in place (tar shards, a
bucket, the Hub, https shards, or a local folder) copied into a local folder, where a trainer that
wants file paths finds them, without downloading the rest.

DIR is laid out as `tar xf` / `indexer extract` would lay it out (a sample's files at
`DIR/<key>.<ext>`), becomes a local dataset of its own in the same database, and is recorded as it
is written, so a following `indexer index DIR` reads nothing and every export that hands trainers
paths serves the subset. A sample DIR already holds (right size, recorded as it is) is skipped,
so a rerun after a kill fetches only what is missing.

Modules: plan.py (the source rows, the files' names checked by extract's rules, what DIR lacks),
fetch.py (bytes by range or whole, checked: size, md5), place.py (a task: fetched, then into
place through extract's sinks; and its samples recorded through the recorder); this one plans
the tasks and runs them on the engine (ingest/engines.py: threads here, or Ray tasks).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from indexer.db.fts import sync_search_index
from indexer.errors import IndexerError
from indexer.extract import prepare_root, reserved_paths
from indexer.ingest.engines import ENGINES, default_readers, fallback_for, pool_for, run_report
from indexer.ingest.guard import describe
from indexer.ingest.recorder import SHOWN_LIMIT, Recorder
from indexer.ingest.remote import RemoteRoot, shard_list_root
from indexer.ingest.run import writer_run
from indexer.ingest.workers import LARGE_TASKS_AHEAD, map_in_order
from indexer.materialize.fetch import LocalReader, Reader, RemoteReader
from indexer.materialize.place import (
    MaterializeTask,
    TaskOutcome,
    Todo,
    record_outcome,
    remove_task_staging,
    run_task,
)
from indexer.materialize.plan import (
    Source,
    Wanted,
    allowed,
    missing_files,
    select_source,
    target_records,
)
from indexer.progress import bar

REMOTE_WORKERS = 16  # tasks fetching at once from a remote source: enough to hide ~20 ms round trips
LOCAL_WORKERS = 4
SAMPLES_PER_TASK = 256  # fetched and written by one task, then recorded by the writer
# or fewer, so each worker gets at least this many tasks: a task fetches its samples one after the
# other, and with fewer, larger tasks the last ones run with most workers idle
TASKS_PER_WORKER = 8


def materialize(db_path: str | os.PathLike[str], to: str | os.PathLike[str], *, dataset_id: str | None = None,
                where: str | None = None, workers: int | None = None, progress: bool = False,
                shard_list: str | os.PathLike[str] | None = None, as_id: str | None = None,
                engine: str = "local", ray_address: str | None = None) -> dict:
    """Copy the selected samples of dataset `dataset_id` (the only other one when None) into `to`
    and record them as dataset `as_id` (default: the folder's name); returns the run summary.

    The fetching and writing runs as tasks (place.py): threads of this process (engine "local"),
    or Ray tasks (engine "ray": `to`, and a local source's folder, must then be paths every node
    sees); the database stays here, written by this process.

    Samples that could not be fetched or checked (`failed`) and files whose names are refused
    (`refused`) are reported, never raised: the caller picks the exit code. A bad option, an
    unreadable source listing or an unwritable DIR raises IndexerError."""
    if engine not in ENGINES:
        raise IndexerError(f"--engine {engine!r}: use {' or '.join(ENGINES)}")
    started = time.monotonic()
    target = Path(to).expanduser().resolve()
    source = select_source(db_path, dataset_id, where, target, as_id)
    reader = _reader(source, shard_list)
    root = prepare_root(to)
    with writer_run(db_path, root, "materialize", as_id) as run:
        summary = _materialize(run.conn, run.dataset, root, source, reader, reserved_paths(db_path, root),
                               workers=workers or default_readers(
                                   engine, ray_address, REMOTE_WORKERS if source.remote else LOCAL_WORKERS),
                               progress=progress, engine=engine, ray_address=ray_address)
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
                 reserved: frozenset[str], *, workers: int, progress: bool, engine: str,
                 ray_address: str | None) -> dict:
    recorder = Recorder(conn, dataset)
    totals = dict.fromkeys(("fetched", "files_written", "bytes_written", "requests", "fetched_bytes"), 0)
    failed: list[dict] = []
    refused: list[dict] = []
    todo, in_place = _todo(root, source.wanted, reserved, target_records(conn, dataset), refused)
    scan_start_ns = time.time_ns()
    tasks = plan_tasks(todo, reader, str(root), scan_start_ns, workers)
    errors: list[str] = []
    remove_task_staging(str(root))
    with bar(progress, desc="materialize", unit=" samples", total=len(todo)) as sample_bar:
        calls = ((task,) for task in tasks if not errors)  # a DIR that cannot be written: no more tasks
        for outcome in map_in_order(run_task, calls, workers, workers * LARGE_TASKS_AHEAD,
                                    recorder.counts.waited, pool_of=pool_for(engine, ray_address, True),
                                    on_error=fallback_for(engine, _task_failed)):
            record_outcome(recorder, str(root), outcome, scan_start_ns)
            for name in totals:
                totals[name] += getattr(outcome, name)
            failed += outcome.failed
            refused += outcome.refusals
            errors += [outcome.error] if outcome.error else []
            sample_bar.update(outcome.samples)
    remove_task_staging(str(root))
    sync_search_index(conn)
    return {"dataset": dataset, "root": str(root), "source": source.dataset, "source_root": source.root,
            "selected": len(source.wanted), "in_place": in_place, **totals,
            "failed": failed[:SHOWN_LIMIT], "failed_count": len(failed),
            "refused": refused[:SHOWN_LIMIT], "refused_count": len(refused),
            "error": errors[0] if errors else None, "readers": workers, **recorder.summary(),
            **run_report(engine)}


def plan_tasks(todo: list[Todo], reader: Reader, root: str, scan_start_ns: int, workers: int
               ) -> list[MaterializeTask]:
    """The samples to fetch as tasks: each holds samples of one shard (or loose files), in key
    order, at most SAMPLES_PER_TASK of them, and fewer when the selection is small (TASKS_PER_WORKER)."""
    by_shard: dict[str | None, list[Todo]] = {}
    for item in todo:
        by_shard.setdefault(item[0].shard, []).append(item)
    size = max(1, min(SAMPLES_PER_TASK, -(-len(todo) // (workers * TASKS_PER_WORKER))))
    tasks: list[MaterializeTask] = []
    for items in by_shard.values():
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            tasks.append(MaterializeTask(len(tasks), root, reader.for_task([w for w, _ in chunk]), chunk,
                                         scan_start_ns))
    return tasks


def _task_failed(call: tuple[MaterializeTask], exc: Exception) -> TaskOutcome:
    """A task that failed for good (its Ray workers died through every retry): each of its
    samples is recorded as not fetched, and a rerun fetches it."""
    task = call[0]
    why = f"its materialize task failed ({describe(exc)}); run materialize again"
    return TaskOutcome(len(task.todo), failed=[{"key": wanted.key, "error": why} for wanted, _ in task.todo])


def _todo(root: Path, wanted: list[Wanted], reserved: frozenset[str], recorded: dict[str, int | None],
          refused: list[dict]) -> tuple[list[Todo], int]:
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


def _note(summary: dict) -> str | None:
    notes = []
    if summary["failed_count"]:
        notes.append(f"{summary['failed_count']} sample(s) could not be fetched")
    if summary["refused_count"]:
        notes.append(f"{summary['refused_count']} file(s) refused")
    if summary["error"]:
        notes.append(summary["error"])
    return "; ".join(notes) or None
