"""A first run's write path: readers write their rows into scratch databases, and the one
writer copies each in with a single INSERT ... SELECT.

On few cores the single writer bounds a first run: pickling rows across, unpickling them and
binding them value by value cost it ~3x more than SQLite's own copy between attached databases.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator

from indexer import unsynced
from indexer.errors import IndexerError
from indexer.ingest.engines import fallback_for, pool_for
from indexer.ingest.recorder import Recorder, ScratchBatch
from indexer.ingest.records import SCRATCH_COLUMNS, json_bytes_in
from indexer.ingest.rows import CompactResult, ReadSettings, Task, read_task, task_failed
from indexer.ingest.workers import LARGE_TASKS_AHEAD, map_in_order


def bulk_load(recorder: Recorder, tasks: Iterable[Task], settings: ReadSettings,
              on_progress: Callable[[int], None]) -> None:
    """Record keys no sample row holds yet (a first run): readers write their rows into scratch
    databases, and the recorder copies each into `samples` with one INSERT ... SELECT, a
    transaction a task, in task (key) order. A kill leaves scratch files that the next writer run
    removes; committed tasks stand.
    """
    folder = scratch_folder(recorder.conn)
    # Readers elsewhere (a Ray cluster) cannot write beside this database: they send the scratch
    # database whole, as bytes, which this process writes where a local reader would have.
    remote_readers = settings.engine != "local"
    read = _read_into_bytes if remote_readers else _read_into_scratch
    try:
        calls = ((task, settings, _scratch_path(folder, n)) for n, task in enumerate(tasks))
        with unsynced_load(recorder.conn):
            for batch in map_in_order(read, calls, settings.workers, settings.workers * LARGE_TASKS_AHEAD,
                                      recorder.counts.waited,
                                      pool_of=pool_for(settings.engine, settings.ray_address, False),
                                      on_error=fallback_for(settings.engine, task_failed)):
                if isinstance(batch, list):  # a task that failed for good: its keys, read_failed
                    recorder.record(batch)
                    on_progress(len(batch))
                    continue
                if remote_readers:
                    batch = _placed(batch)
                recorder.record_scratch(batch, fresh=True)
                on_progress(batch.keys)
    finally:
        remove_scratch_folder(folder)


# Anything in one of these means the database holds more than a first load could rebuild.
_RECORDS = ("samples", "tar_shards", "shards", "exports", "caption_files")


@contextlib.contextmanager
def unsynced_load(conn: sqlite3.Connection) -> Iterator[None]:
    """Write without waiting for the disk while the database holds nothing but this load, and wait
    for it once at the end (unsynced.py says why that is safe, and how a restart is caught)."""
    main = _main_file(conn)
    holds = conn.execute("SELECT " + " OR ".join(f"EXISTS (SELECT 1 FROM {table})" for table in _RECORDS)
                         ).fetchone()[0]
    if holds or not unsynced.begin(main):
        yield
        return
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    conn.execute("PRAGMA synchronous = OFF")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error, OSError, IndexerError):  # else the next writer flushes it
            conn.execute(f"PRAGMA synchronous = {int(level)}")
            unsynced.settle(main)
        raise
    conn.execute(f"PRAGMA synchronous = {int(level)}")
    unsynced.settle(main)


def _read_into_bytes(task: Task, settings: ReadSettings, path: str) -> tuple[bytes, ScratchBatch]:
    """_read_into_scratch on a machine that cannot see path: the scratch database is built in
    memory and sent back whole (SQLite's own file format: columnar enough, and the writer copies it
    in with one INSERT ... SELECT, no row ever a Python object on its side)."""
    results = read_task(task, settings)
    rows, json_total, data = scratch_bytes(results)
    return data, ScratchBatch(path, len(task), rows, sum(result[3] for result in results), json_total)


def _placed(sent: tuple[bytes, ScratchBatch]) -> ScratchBatch:
    data, batch = sent
    with open(batch.path, "wb") as handle:
        handle.write(data)
    return batch


SCRATCH_SUFFIX = "-scratch"


def scratch_folder(conn: sqlite3.Connection) -> str:
    """A new folder for this run's scratch databases, `DB-scratch/run-XXXXXXXX/` beside the
    database (the folder the user named for it). Its name is random, so nothing from a tar shard
    can be placed there ahead of the reader writing it, whatever the filesystem's case rules."""
    parent = _main_file(conn) + SCRATCH_SUFFIX
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix="run-", dir=parent)


def _main_file(conn: sqlite3.Connection) -> str:
    return next(row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main")


def remove_scratch(db_path: str | os.PathLike[str]) -> None:
    """Remove what killed runs left beside the database (each writer run starts so)."""
    parent = os.path.realpath(db_path) + SCRATCH_SUFFIX  # as SQLite names the file it opened
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            if entry.name.startswith("run-") and entry.is_dir(follow_symlinks=False):
                remove_scratch_folder(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(parent)


def remove_scratch_folder(folder: str) -> None:
    """Remove a run's scratch folder (only the files this module names), and its parent if empty."""
    _clear_scratch(folder)
    for empty in (folder, os.path.dirname(folder)):
        with contextlib.suppress(OSError):
            os.rmdir(empty)


def _scratch_path(folder: str, number: int) -> str:
    return scratch_path(folder, f"{number:07d}")


def scratch_path(folder: str, name: str) -> str:
    """A scratch database's path in folder (the only names _clear_scratch removes)."""
    return os.path.join(folder, f"task-{name}.sqlite")


def _clear_scratch(folder: str) -> None:
    """Remove the scratch databases (only the files this module names) from folder."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("task-") and entry.name.endswith((".sqlite", ".sqlite-journal")):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _read_into_scratch(task: Task, settings: ReadSettings, path: str) -> ScratchBatch:
    """Read a task's keys and write their rows to a new scratch database at path."""
    results = read_task(task, settings)
    try:
        rows, json_total = write_scratch(path, results)
    except (OSError, sqlite3.Error) as exc:
        raise IndexerError(f"cannot write scratch database {path} ({exc}): free some space beside the"
                           " database (or fix its folder's permissions) and run index again") from None
    return ScratchBatch(path, len(task), rows, sum(result[3] for result in results), json_total)


def write_scratch(path: str, results: Iterable[CompactResult]) -> tuple[int, int]:
    """Write the results that hold a sample to a new scratch database at path (no journal, no
    sync: it is thrown away once copied, and a crash only means reading again); returns (rows,
    their JSON bytes)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    scratch = sqlite3.connect(path, isolation_level=None)
    try:
        return _fill_scratch(scratch, results)
    finally:
        scratch.close()


def scratch_bytes(results: Iterable[CompactResult]) -> tuple[int, int, bytes]:
    """write_scratch in memory: (rows, their JSON bytes, the database file's bytes)."""
    scratch = sqlite3.connect(":memory:", isolation_level=None)
    try:
        rows, json_total = _fill_scratch(scratch, results)
        return rows, json_total, scratch.serialize()
    finally:
        scratch.close()


def _fill_scratch(scratch: sqlite3.Connection, results: Iterable[CompactResult]) -> tuple[int, int]:
    rows = []
    json_total = 0
    for key, row, stats, _read in results:
        if row is not None:  # None: every file of the key vanished since the scan
            rows.append((key, *row, *stats))
            json_total += json_bytes_in(stats)
    scratch.execute("PRAGMA journal_mode = OFF")
    scratch.execute("PRAGMA synchronous = OFF")
    scratch.execute(f"CREATE TABLE rows ({', '.join(SCRATCH_COLUMNS)})")
    scratch.execute("BEGIN")
    scratch.executemany(f"INSERT INTO rows VALUES ({', '.join('?' * len(SCRATCH_COLUMNS))})", rows)
    scratch.execute("COMMIT")
    return len(rows), json_total
