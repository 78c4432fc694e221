"""One materialize task, run wherever the engine puts it (a thread of this process, or a Ray task
on any node): its samples fetched and checked (fetch.py), each file written whole into DIR by
extract's own sinks, the placed files stat-ed and their samples built from the bytes in hand
(extract's read_placed). The task hands those samples back as plain values and the writer process
records them (record_outcome), with trusted records: a following `indexer index DIR` finds every
file unchanged and reads nothing. So DIR must be a path every node running tasks sees.

Each file is written unnamed and linked into place once whole (O_TMPFILE), or written in the
task's own staging folder and renamed into place; every write goes through folder descriptors
opened with O_NOFOLLOW, so a symlink in DIR leads nothing outside it. A task's staging folder
(`.indexer-materialize-N`) is removed when it ends, and a task run again (its worker died) starts
by removing what the last attempt left.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

from indexer.extract.members import Refused
from indexer.extract.sinks import LinkSink, StagingSink, WriteFailed, links_in_place, place_staged
from indexer.extract.task import ShardOutcome
from indexer.extract.worker import DIR_FLAGS, Result, read_placed, remove_staging, staging_in
from indexer.extract.writer import with_partners
from indexer.ingest.recorder import Recorder
from indexer.ingest.rows import compact
from indexer.ingest.walk import STAGING_PREFIX, split_sample_path
from indexer.materialize.fetch import Fetched, Reader
from indexer.materialize.plan import Wanted, WantedFile

STAGING = STAGING_PREFIX + "materialize"  # skipped by `index`; what a killed run left goes next run
FILE_MODE = 0o644
Todo = tuple[Wanted, tuple[WantedFile, ...]]  # a sample, and the files DIR lacks


@dataclass(frozen=True)
class MaterializeTask:
    """Samples of one shard (or loose files) to fetch and place: plain, picklable values."""

    number: int  # names its staging folder
    root: str  # DIR
    reader: Reader  # holding only what these samples need (Reader.for_task)
    todo: list[Todo]
    scan_start_ns: int

    @property
    def staging(self) -> str:
        return f"{STAGING}-{self.number:06d}"


@dataclass
class TaskOutcome:
    """What one task did, for the writer to record and count."""

    samples: int  # samples the task was given
    results: list[Result] = field(default_factory=list)  # the placed files' samples
    failed: list[dict] = field(default_factory=list)  # samples not fetched: {key, error}
    refusals: list[dict] = field(default_factory=list)  # files not placed: {key, file, reason}
    fetched: int = 0  # samples whose files were all placed
    files_written: int = 0
    bytes_written: int = 0
    requests: int = 0
    fetched_bytes: int = 0
    error: str | None = None  # DIR could not be written (a full disk): the run stops after recording


def run_task(task: MaterializeTask) -> TaskOutcome:
    """Fetch, check and place the task's samples. Never raises for the data, the network or an
    unwritable DIR (outcome.failed / outcome.error); the environment still stops the run."""
    outcome = TaskOutcome(len(task.todo))
    placed: list[str] = []
    json_data: dict[str, bytes] = {}
    stats: dict[str, os.stat_result] | None = None
    sizes: dict[str, dict[str, int]] = {}  # per fetched sample, its files' sizes
    try:
        with staging_in(task.root, task.staging) as (root_fd, staging_fd):
            placed, json_data, stats = _fetch_and_write(task, root_fd, staging_fd, outcome, sizes)
    except OSError as exc:
        outcome.error = outcome.error or cannot_write(task.root, exc)
    files = set(placed)
    outcome.fetched = sum(1 for names in sizes.values() if files.issuperset(names))
    outcome.files_written = len(files)
    outcome.bytes_written = sum(size for names in sizes.values() for name, size in names.items()
                                if name in files)
    outcome.results = read_placed(task.root, placed, json_data, task.scan_start_ns, stats)
    return outcome


def _fetch_and_write(task: MaterializeTask, root_fd: int, staging_fd: int, outcome: TaskOutcome,
                     sizes: dict[str, dict[str, int]]
                     ) -> tuple[list[str], dict[str, bytes], dict[str, os.stat_result] | None]:
    """Each sample fetched, then its files written at once (one sample's bytes in memory at a
    time); returns the placed files, the JSON bytes written and, when linked, their stats."""
    shard_outcome = ShardOutcome(task.root)  # extract's sinks count into it
    sink: LinkSink | StagingSink = (LinkSink(root_fd, staging_fd, shard_outcome) if links_in_place(staging_fd)
                                    else StagingSink(staging_fd))
    try:
        for wanted, files in task.todo:
            fetched = task.reader.fetch(wanted, files)
            outcome.requests += fetched.requests
            outcome.fetched_bytes += fetched.bytes
            if fetched.error is not None:
                outcome.failed.append({"key": wanted.key, "error": fetched.error})
                continue
            sizes[wanted.key] = {name: len(data) for name, data in fetched.data.items()}
            outcome.error = _write_sample(sink, fetched, task.root, shard_outcome)
            if outcome.error:
                break
        if isinstance(sink, LinkSink):
            placed, json_data, stats = list(sink.placed), sink.json_data, sink.stats
        else:
            placed, json_data = place_staged(root_fd, task.root, sink, shard_outcome)
            stats = None
            if shard_outcome.error is not None:  # extract's words: say it in ours
                outcome.error = outcome.error or cannot_write(task.root, None)
    finally:
        if isinstance(sink, LinkSink):
            sink.close()
    outcome.refusals = [{"key": (split_sample_path(name) or (name,))[0], "file": name, "reason": reason}
                        for name, reason in shard_outcome.refusals]
    return placed, json_data, stats


def _write_sample(sink: LinkSink | StagingSink, fetched: Fetched, root: str,
                  shard_outcome: ShardOutcome) -> str | None:
    """A sample's fetched files to the sink; a refused one (a symlink or file where its folder
    should be) is counted and the rest go on; a failed write stops the task (its message)."""
    mtime_ns = fetched.wanted.mtime_ns if fetched.wanted.mtime_ns is not None else time.time_ns()
    for wanted_file in fetched.files:
        name = wanted_file.name
        try:
            _write(sink, name, fetched.data[name], mtime_ns, keep=name != fetched.wanted.image)
        except Refused as exc:
            shard_outcome.refusals.append((name, str(exc)))
        except WriteFailed as exc:
            return cannot_write(root, exc.__cause__)
    return None


def cannot_write(root: str, exc: BaseException | None) -> str:
    reason = getattr(exc, "strerror", None) or exc or "a write failed"
    return (f"cannot write into {root} ({reason}); free some space or fix its permissions, then run"
            " materialize again")


def _write(sink: LinkSink | StagingSink, name: str, data: bytes, mtime_ns: int, keep: bool) -> None:
    """One file, whole, through the sink (keep: its bytes are a JSON the reader parses as is)."""
    parts = name.split("/")
    fd = sink.create(parts, FILE_MODE)
    try:
        with open(fd, "wb", closefd=False) as handle:
            handle.write(data)
    except OSError as exc:
        sink.abandon(fd)
        raise WriteFailed from exc
    except BaseException:
        sink.abandon(fd)
        raise
    sink.finish(fd, parts, name, mtime_ns, data if keep else None)


def record_outcome(recorder: Recorder, root: str, outcome: TaskOutcome, scan_start_ns: int) -> None:
    """In the writer process: a task's placed samples recorded (a key whose partner file came from
    elsewhere is completed with it first, as extract does)."""
    results = with_partners(recorder, root, outcome.results, scan_start_ns)
    recorder.record([compact(*result) for result in results])
    outcome.results = []  # recorded: free the memory


def remove_task_staging(root: str) -> None:
    """The staging folders tasks of a killed run (or a task whose workers all died) left in DIR."""
    root_fd = os.open(root, DIR_FLAGS)
    try:
        for name in os.listdir(root_fd):
            if name == STAGING or name.startswith(STAGING + "-"):
                with contextlib.suppress(FileNotFoundError):
                    remove_staging(root_fd, root, name)
    finally:
        os.close(root_fd)
