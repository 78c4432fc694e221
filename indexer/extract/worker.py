"""The worker side of `extract`: one shard's files into place (stage.py reads it, sinks.py writes),
then read.

Every write goes through directory file descriptors opened with O_NOFOLLOW, so neither a hostile
member nor a symlink already in the root can put a byte outside it. Runs in a worker process (one
shard each), so it takes and returns plain, picklable values.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat as stat_module
from collections.abc import Callable, Iterable, Iterator

from indexer.extract.sinks import DIR_FLAGS, LinkSink, StagingSink, links_in_place, place_staged
from indexer.extract.stage import stage_members
from indexer.extract.task import Result, ShardOutcome, ShardTask, cannot_write
from indexer.ingest.bulk import write_scratch
from indexer.ingest.guard import REPORT, describe, failed_record, raise_if_environment
from indexer.ingest.read import read_sample
from indexer.ingest.recorder import ScratchBatch
from indexer.ingest.rows import compact
from indexer.ingest.walk import split_sample_path
from indexer.ingest.workers import init_worker

__all__ = ["DIR_FLAGS", "Result", "ShardOutcome", "ShardTask", "extract_in_worker", "extract_shard",
           "init_extract_worker", "read_placed", "remove_staging"]


def extract_shard(task: ShardTask, report: Callable[[int], None] | None = None) -> ShardOutcome:
    """Put one shard's files in place and read their samples (runs in a worker), under the guard.

    Never raises for a bad shard or an unwritable root: the reason goes to outcome.error.
    """
    try:
        return _extract_shard(task, report)
    except Exception as exc:
        raise_if_environment(exc)
        return ShardOutcome(task.path, error=f"{task.path}: extracting stopped ({describe(exc)}); {REPORT}")


def _extract_shard(task: ShardTask, report: Callable[[int], None] | None) -> ShardOutcome:
    outcome = ShardOutcome(task.path)
    placed: list[str] = []
    json_data: dict[str, bytes] = {}
    stats: dict[str, os.stat_result] | None = None
    try:
        with staging_in(task.root, task.staging) as (root_fd, staging_fd):
            if links_in_place(staging_fd):
                placed, json_data, stats = _linked(task, root_fd, staging_fd, outcome, report)
            else:
                placed, json_data = _through_staging(task, root_fd, staging_fd, outcome, report)
    except OSError as exc:
        outcome.error = cannot_write(task.root, exc)
    _hand_over(task, outcome, read_placed(task.root, placed, json_data, task.scan_start_ns, stats))
    return outcome


def _hand_over(task: ShardTask, outcome: ShardOutcome, results: list[Result]) -> None:
    """A pair the shard holds whole goes to the writer as a row of a scratch database (copied in
    with one INSERT ... SELECT); a key missing its JSON or image may have a partner elsewhere, so
    it goes as a result, for the writer to complete."""
    if task.scratch is None:
        outcome.results = results
        return
    whole = [compact(*result) for result in results
             if result[1] is not None and result[1].json is not None and result[1].image is not None]
    outcome.results = [result for result in results
                       if result[1] is None or result[1].json is None or result[1].image is None]
    try:
        rows, json_total = write_scratch(task.scratch, whole)
    except (OSError, sqlite3.Error):
        outcome.results = results  # the scratch folder is unwritable: send them all instead
        return
    outcome.scratch = ScratchBatch(task.scratch, len(whole), rows, sum(result[3] for result in whole),
                                   json_total)


@contextlib.contextmanager
def staging_in(root: str, staging: str) -> Iterator[tuple[int, int]]:
    """DIR and a private staging folder inside it, both open by descriptor (no path is looked up
    again while files are placed). What a killed run left there is removed first; the folder is
    removed again when the work ends normally (after an error, the next run removes it)."""
    root_fd = os.open(root, DIR_FLAGS)
    try:
        remove_staging(root_fd, root, staging)
        os.mkdir(staging, 0o700, dir_fd=root_fd)
        staging_fd = os.open(staging, DIR_FLAGS, dir_fd=root_fd)
        try:
            yield root_fd, staging_fd
        finally:
            os.close(staging_fd)
        remove_staging(root_fd, root, staging)
    finally:
        os.close(root_fd)


def remove_staging(root_fd: int, root: str, name: str) -> None:
    """Remove a staging folder left by an earlier (killed) run; a symlink in its place is unlinked."""
    try:
        st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat_module.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=root_fd)  # fd-based on Linux: never follows symlinks inside
    else:
        os.unlink(name, dir_fd=root_fd)



def _linked(task: ShardTask, root_fd: int, staging_fd: int, outcome: ShardOutcome,
            report: Callable[[int], None] | None
            ) -> tuple[list[str], dict[str, bytes], dict[str, os.stat_result]]:
    """Each file written unnamed and linked into place whole; what was placed is returned even
    when the shard stops half-way (a write error), so it is recorded."""
    sink = LinkSink(root_fd, staging_fd, outcome)
    try:
        stage_members(task, sink, outcome, report)
    except OSError as exc:
        outcome.error = cannot_write(task.root, exc)
    finally:
        sink.close()
    return list(sink.placed), sink.json_data, sink.stats


def _through_staging(task: ShardTask, root_fd: int, staging_fd: int, outcome: ShardOutcome,
                     report: Callable[[int], None] | None) -> tuple[list[str], dict[str, bytes]]:
    """The whole shard into its staging folder, then each file renamed into place."""
    sink = StagingSink(staging_fd)
    stage_members(task, sink, outcome, report)
    return place_staged(root_fd, task.root, sink, outcome)


def read_placed(
    root: str, placed: Iterable[str], json_data: dict[str, bytes], scan_start_ns: int,
    stats: dict[str, os.stat_result] | None = None,
) -> list[Result]:
    """Sample records for the placed files, from the bytes already in hand and their stat after
    placing (given, or taken now)."""
    by_key: dict[str, list[str]] = {}
    for path in placed:
        parts = split_sample_path(path)
        if parts is not None:
            by_key.setdefault(parts[0], []).append(path)
    results: list[Result] = []
    for key in sorted(by_key):
        try:
            sample, files, files_read = read_sample(root, key, by_key[key], scan_start_ns,
                                                    json_bytes=json_data, known_stats=stats)
        except Exception as exc:
            raise_if_environment(exc)
            results.append((key, failed_record(key, by_key[key], exc), [], 0))
            continue
        # this run wrote the files and stat-ed them after placing them: their content is known
        results.append((key, sample, [record.trusted() for record in files], files_read))
    return results


# The worker process's end of the progress queue (bytes read), set by its pool initializer.
_progress_queue = None


def init_extract_worker(progress_queue) -> None:
    """Drop the writer lock and die with the parent, as index's readers do; report bytes read."""
    global _progress_queue
    init_worker()
    _progress_queue = progress_queue


def extract_in_worker(task: ShardTask) -> ShardOutcome:
    """extract_shard in a pool process, its progress going to the parent through the queue."""
    report = _progress_queue.put if _progress_queue is not None else None
    return extract_shard(task, report)
