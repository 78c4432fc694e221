"""The `extract` stage: unpack webdataset tar shards into a dataset root and index them in one pass.

Safety: members are read one by one from the tar stream; only regular files and folders whose
normalised name stays inside the root are written, and every write goes through directory file
descriptors opened with O_NOFOLLOW, so neither a hostile member nor a symlink already in the root
can put a byte outside it. The checks are those of PEP 706's `data` filter (members.py).

Resumability: each file is written unnamed (O_TMPFILE) in its folder and linked into place whole,
or, on filesystems without O_TMPFILE, the shard goes into its own staging folder
(`.indexer-extract-*`, which the index walk skips) and its files are renamed into place. Then its
samples are recorded and the shard row is marked finished. A killed run leaves the shard
unfinished, so the next run does that shard again from the start; finished shards are skipped.

One pass: JSON members are kept in memory as they stream by and parsed by the index's own reader,
and files are stat-ed once in place (a link or rename changes ctime), so a following
`indexer index` finds every file unchanged and reads nothing. A shard's whole new pairs reach the
writer as a scratch database (ingest/bulk.py), copied in with one INSERT ... SELECT.

Modules: members.py (which members are written, and where), task.py (what a worker is given and
returns), stage.py (a shard's members read), sinks.py (written into place, or through staging),
worker.py (one shard, then its samples read; runs in a worker process), writer.py (the `shards`
rows, the samples through the ingest's write path, the summary); this one plans the shards and
runs the workers.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import hashlib
import multiprocessing
import os
import queue
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from indexer.errors import IndexerError
from indexer.extract.worker import (
    DIR_FLAGS,
    ShardOutcome,
    ShardTask,
    extract_in_worker,
    extract_shard,
    init_extract_worker,
    remove_staging,
)
from indexer.extract.writer import begin_shard, record_shard, run_error, run_summary
from indexer.ingest.bulk import SCRATCH_SUFFIX, remove_scratch_folder, scratch_folder, scratch_path
from indexer.ingest.derived import build_derived, defer_derived
from indexer.ingest.engines import default_readers, fallback_for, pool_for, run_report
from indexer.ingest.guard import describe
from indexer.ingest.recorder import Recorder
from indexer.ingest.run import resolve_root, writer_run
from indexer.ingest.walk import STAGING_PREFIX
from indexer.ingest.workers import LARGE_TASKS_AHEAD, default_workers, map_in_order
from indexer.progress import bar
from indexer.unsynced import MARKER_SUFFIX

STAGING_NAME = STAGING_PREFIX + "extract-"


def extract_shards(
    db_path: str | os.PathLike[str],
    shards: Iterable[str | os.PathLike[str]],
    to: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict:
    """Extract the shards into `to` and record their samples; returns the run summary.

    engine "ray": each shard is a Ray task; `to` must then be a path every node sees (a shared
    filesystem), and the database stays here, written by this process.

    Refused members and damaged shards are reported in the summary (`refusals`, `failures`),
    never raised: the caller picks the exit code after everything else was done.
    """
    started = time.monotonic()
    shard_paths = check_shards(shards)
    root = prepare_root(to)
    with writer_run(db_path, root, "extract", dataset_id) as run:
        summary = _extract_all(
            run.conn, run.dataset, root, shard_paths, reserved_paths(db_path, root),
            workers=workers or default_readers(engine, ray_address, default_workers()), progress=progress,
            engine=engine, ray_address=ray_address,
        )
        summary.update(run_id=run.id, seconds=round(time.monotonic() - started, 3), **run_report(engine))
        run.finish(summary, status="failed" if summary["failures"] else "done", error=run_error(summary))
    return summary


def check_shards(shards: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Resolved shard paths in the order given, duplicates dropped; all must be readable files."""
    found: dict[Path, None] = {}
    for shard in shards:
        path = Path(shard).expanduser()
        if not path.exists():
            raise IndexerError(f"shard {path} does not exist: check the path")
        if not path.is_file():
            raise IndexerError(f"shard {path} is not a file: pass the .tar/.tar.gz/.tgz files themselves")
        if not os.access(path, os.R_OK):
            raise IndexerError(f"shard {path} is not readable: fix its permissions")
        found[path.resolve()] = None
    if not found:
        raise IndexerError("no shard given: pass one or more .tar files before --to DIR")
    return list(found)


def prepare_root(to: str | os.PathLike[str]) -> Path:
    """The target folder, created if missing (like `mkdir data` before `tar xf -C data`)."""
    path = Path(to).expanduser()
    if not path.exists() and not path.is_symlink():
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise IndexerError(f"cannot create target folder {path}: {exc.strerror}") from exc
    return resolve_root(path)


def reserved_paths(db_path: str | os.PathLike[str], root: Path) -> frozenset[str]:
    """Root-relative paths of the database's own files, when the database lives inside the root
    (casefolded: members.py compares names whatever their case)."""
    base = os.fspath(Path(db_path).resolve())
    reserved = set()
    for suffix in ("", "-wal", "-shm", "-journal", ".lock", SCRATCH_SUFFIX, MARKER_SUFFIX,
                   MARKER_SUFFIX + ".partial"):
        with contextlib.suppress(ValueError):
            reserved.add(Path(base + suffix).relative_to(root).as_posix().casefold())
    return frozenset(reserved)


def staging_name(shard: Path) -> str:
    return STAGING_NAME + hashlib.sha1(os.fsencode(shard)).hexdigest()[:16]


def _extract_all(
    conn: sqlite3.Connection,
    dataset: str,
    root: Path,
    shard_paths: list[Path],
    reserved: frozenset[str],
    *,
    workers: int,
    progress: bool,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict:
    scan_start_ns = time.time_ns()
    scratch = scratch_folder(conn)
    tasks, skipped = plan(conn, dataset, root, shard_paths, reserved, scan_start_ns, scratch)
    if tasks and not conn.execute("SELECT 1 FROM samples WHERE dataset = ? LIMIT 1", (dataset,)).fetchone():
        defer_derived(conn)  # a first extract is a bulk write: built at its end instead
    _remove_orphan_staging(conn, dataset, root, {task.staging for task in tasks})
    recorder = Recorder(conn, dataset)
    outcomes: list[ShardOutcome] = []
    try:
        with bar(progress, desc="extract", unit="B", unit_scale=True, unit_divisor=1024,
                 total=sum(task.size for task in tasks)) as bytes_bar:
            run = _run_tasks if engine == "local" else functools.partial(_run_on_ray, ray_address=ray_address)
            for outcome in run(conn, dataset, tasks, workers, bytes_bar.update, recorder.counts.waited):
                record_shard(recorder, root, outcome, scan_start_ns)
                outcome.results = []  # recorded: free the memory
                outcomes.append(outcome)
    finally:
        remove_scratch_folder(scratch)
    build_derived(conn, progress)  # what this bulk write deferred, or a stopped run left
    return run_summary(recorder, root, shard_paths, skipped, outcomes)


def plan(
    conn: sqlite3.Connection,
    dataset: str,
    root: Path,
    shard_paths: list[Path],
    reserved: frozenset[str],
    scan_start_ns: int,
    scratch: str | None = None,
) -> tuple[list[ShardTask], list[str]]:
    """Shards to extract, and the finished ones (same path, size and mtime) to skip; each task's
    whole pairs go to a scratch database in the folder `scratch`, when given."""
    tasks: list[ShardTask] = []
    skipped: list[str] = []
    for path in shard_paths:
        st = path.stat()
        row = conn.execute(
            "SELECT status, size, mtime_ns FROM shards WHERE dataset = ? AND path = ?",
            (dataset, str(path)),
        ).fetchone()
        if row == ("finished", st.st_size, st.st_mtime_ns):
            skipped.append(str(path))
            continue
        tasks.append(ShardTask(str(path), str(root), staging_name(path), st.st_size, st.st_mtime_ns,
                               reserved, scan_start_ns,
                               scratch_path(scratch, f"shard-{len(tasks):06d}") if scratch else None))
    return tasks, skipped


def _remove_orphan_staging(conn: sqlite3.Connection, dataset: str, root: Path, keep: set[str]) -> None:
    """Staging folders of unfinished shards not given this time: a killed run's leftovers."""
    names = [row[0] for row in conn.execute(
        "SELECT staging FROM shards WHERE dataset = ? AND status != 'finished'", (dataset,))]
    root_fd = os.open(root, DIR_FLAGS)
    try:
        for name in names:
            if name not in keep and name.startswith(STAGING_NAME) and "/" not in name:
                remove_staging(root_fd, str(root), name)
    finally:
        os.close(root_fd)


def _run_tasks(
    conn: sqlite3.Connection,
    dataset: str,
    tasks: list[ShardTask],
    workers: int,
    report: Callable[[int], object],
    on_wait: Callable[[float], None],
) -> Iterator[ShardOutcome]:
    """Extract shards (in worker processes when there are several), yielding as each finishes;
    on_wait hears how long this process waited for the workers.

    Each shard is marked 'extracting' before its worker starts, so a kill at any later instant
    leaves it unfinished and the next run does it again.
    """
    workers = min(workers, len(tasks))
    if workers <= 1:
        for task in tasks:
            begin_shard(conn, dataset, task)
            yield extract_shard(task, report)
        return
    context = multiprocessing.get_context("fork")
    progress_queue = context.Queue()
    pending = collections.deque(tasks)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_extract_worker,
                                initargs=(progress_queue,)) as pool:
        in_flight: set[cf.Future] = set()
        while pending or in_flight:
            while pending and len(in_flight) < workers:
                task = pending.popleft()
                begin_shard(conn, dataset, task)
                in_flight.add(pool.submit(extract_in_worker, task))
            waiting = time.perf_counter()
            done, in_flight = cf.wait(in_flight, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            on_wait(time.perf_counter() - waiting)
            _drain(progress_queue, report)
            for future in done:
                yield future.result()
        _drain(progress_queue, report)


def _run_on_ray(conn: sqlite3.Connection, dataset: str, tasks: list[ShardTask], workers: int,
                report: Callable[[int], object], on_wait: Callable[[float], None],
                ray_address: str | None) -> Iterator[ShardOutcome]:
    """Extract shards as Ray tasks, in order, each marked 'extracting' as it is submitted. Their
    samples come back as results (a scratch database beside this one is out of a remote worker's
    reach), and a shard's bytes count as it finishes."""

    def calls() -> Iterator[tuple[ShardTask]]:
        for task in tasks:
            begin_shard(conn, dataset, task)
            yield (dataclasses.replace(task, scratch=None),)

    def failed(call: tuple[ShardTask], exc: Exception) -> ShardOutcome:
        return ShardOutcome(call[0].path, error=f"{call[0].path}: its extract task failed ({describe(exc)});"
                            " run extract again")

    for outcome in map_in_order(extract_shard, calls(), workers, workers * LARGE_TASKS_AHEAD, on_wait,
                                pool_of=pool_for("ray", ray_address, io_bound=False),
                                on_error=fallback_for("ray", failed)):
        report(outcome.bytes)
        yield outcome


def _drain(progress_queue, report: Callable[[int], object]) -> None:
    while True:
        try:
            report(progress_queue.get_nowait())
        except queue.Empty:
            return
