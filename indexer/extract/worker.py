"""The worker side of `extract`: one shard into its staging folder (stage.py), into place, and read.

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
from collections.abc import Callable, Iterable

from indexer.extract.members import Refused, printable
from indexer.extract.stage import StagedMember, stage_members
from indexer.extract.task import Result, ShardOutcome, ShardTask, cannot_write
from indexer.ingest.bulk import write_scratch
from indexer.ingest.read import FileRecord, read_sample
from indexer.ingest.rows import compact
from indexer.ingest.walk import split_sample_path
from indexer.ingest.workers import init_worker

MAX_OPEN_FOLDERS = 256
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

__all__ = ["DIR_FLAGS", "Result", "ShardOutcome", "ShardTask", "extract_in_worker", "extract_shard",
           "init_extract_worker", "not_racy", "read_placed", "remove_staging"]


class _Folders:
    """Folder fds under the root, opened component by component without following symlinks."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.fds: dict[str, int] = {}

    def open(self, parts: list[str]) -> int:
        if len(self.fds) >= MAX_OPEN_FOLDERS:
            self.close()
        fd = self.root_fd
        path = ""
        for part in parts:
            path = f"{path}/{part}" if path else part
            cached = self.fds.get(path)
            if cached is None:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                try:
                    cached = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    raise Refused(
                        f"{path} in the target folder is a symlink or a file, not a folder; "
                        "nothing is written through it"
                    ) from None
                self.fds[path] = cached
            fd = cached
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def extract_shard(task: ShardTask, report: Callable[[int], None] | None = None) -> ShardOutcome:
    """Stage one shard, move its files into place and read their samples (runs in a worker).

    Never raises for a bad shard or an unwritable root: the reason goes to outcome.error.
    """
    outcome = ShardOutcome(task.path)
    placed: list[str] = []
    json_data: dict[str, bytes] = {}
    try:
        root_fd = os.open(task.root, DIR_FLAGS)
        try:
            remove_staging(root_fd, task.root, task.staging)
            os.mkdir(task.staging, 0o700, dir_fd=root_fd)
            staging_fd = os.open(task.staging, DIR_FLAGS, dir_fd=root_fd)
            try:
                staged, preloaded = stage_members(task, staging_fd, outcome, report)
                placed, json_data = _place_members(root_fd, staging_fd, staged, preloaded, outcome)
            finally:
                os.close(staging_fd)
            remove_staging(root_fd, task.root, task.staging)
        finally:
            os.close(root_fd)
    except OSError as exc:
        outcome.error = cannot_write(task.root, exc)
    results = read_placed(task.root, placed, json_data, task.scan_start_ns)
    if task.scratch is None:
        outcome.results = results
        return outcome
    # A pair the shard holds whole goes to the writer as a row of a scratch database (copied in
    # with one INSERT ... SELECT); a key missing its JSON or image may have a partner elsewhere,
    # so it goes as a result, for the writer to complete.
    whole = [compact(*result) for result in results
             if result[1] is not None and result[1].json is not None and result[1].image is not None]
    outcome.results = [result for result in results
                       if result[1] is None or result[1].json is None or result[1].image is None]
    try:
        outcome.scratch_rows, outcome.scratch_json_bytes = write_scratch(task.scratch, whole)
    except (OSError, sqlite3.Error):
        outcome.results = results  # the scratch folder is unwritable: send them all instead
        outcome.scratch_rows = 0
        return outcome
    outcome.scratch = task.scratch
    outcome.scratch_files_read = sum(result[3] for result in whole)
    return outcome


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



def _place_members(
    root_fd: int,
    staging_fd: int,
    staged: list[StagedMember],
    preloaded: dict[str, bytes],
    outcome: ShardOutcome,
) -> tuple[list[str], dict[str, bytes]]:
    """Rename staged files to their place (in member order, so a later duplicate wins)."""
    folders = _Folders(root_fd)
    placed: dict[str, None] = {}
    json_data: dict[str, bytes] = {}
    try:
        for staged_name, parts, member_name in staged:
            try:
                if staged_name is None:
                    folders.open(parts)
                else:
                    parent = folders.open(parts[:-1])
                    os.rename(staged_name, parts[-1], src_dir_fd=staging_fd, dst_dir_fd=parent)
                    path = "/".join(parts)
                    placed[path] = None
                    if staged_name in preloaded:
                        json_data[path] = preloaded.pop(staged_name)
                    else:
                        json_data.pop(path, None)
                outcome.members += 1
            except Refused as exc:
                outcome.refusals.append((printable(member_name), str(exc)))
            except OSError as exc:
                reason = f"cannot put it in place: {exc.strerror or exc}"
                outcome.refusals.append((printable(member_name), reason))
    finally:
        folders.close()
    return list(placed), json_data


def read_placed(
    root: str, placed: Iterable[str], json_data: dict[str, bytes], scan_start_ns: int
) -> list[Result]:
    """Sample records for the placed files, from the bytes already in hand and a fresh stat."""
    by_key: dict[str, list[str]] = {}
    for path in placed:
        parts = split_sample_path(path)
        if parts is not None:
            by_key.setdefault(parts[0], []).append(path)
    results: list[Result] = []
    for key in sorted(by_key):
        sample, files, files_read = read_sample(root, key, by_key[key], scan_start_ns, json_bytes=json_data)
        results.append((key, sample, [not_racy(record) for record in files], files_read))
    return results


def not_racy(record: FileRecord) -> FileRecord:
    """This run wrote the file and stat-ed it after the rename: its content is known."""
    return (*record[:5], 0)  # type: ignore[return-value]


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
