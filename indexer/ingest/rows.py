"""What a reader hands the write path: a read sample as flat rows, and what a run counted.

Shared by the two ways samples are written (pipeline.py merges results into stored rows;
bulk.py copies a first run's rows in from the readers' scratch databases), and by the tar shard
readers and `extract`, which build the same rows from members.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from indexer.ingest.change import FileRecord
from indexer.ingest.guard import failed_sample, raise_if_environment
from indexer.ingest.read import SampleRecord, read_sample
from indexer.ingest.records import STAT_COLUMNS, file_stats

SHARD_AT = STAT_COLUMNS.index("shard")
# What a reader sends back per key: (key, content row (STORED_COLUMNS) or None when no file is
# left, stat row (STAT_COLUMNS), files read). Flat tuples of str/int only: they pickle several
# times cheaper than the reader's objects, and go to executemany as they are.
CompactResult = tuple[str, tuple | None, tuple | None, int]


def compact(key: str, sample: SampleRecord | None, files: list[FileRecord], files_read: int) -> CompactResult:
    """A read result in the form write_results stores (computed in the reader processes)."""
    if sample is None:
        return key, None, None, files_read
    image, json_path, *rest = sample
    cut = len(key) + 1
    row = (image[cut:] if image else None, json_path[cut:] if json_path else None, *rest)
    return key, row, file_stats(key, json_path, image, files), files_read


@dataclass
class Counts:
    added: int = 0
    changed: int = 0
    removed: int = 0
    files_read: int = 0
    waited_s: float = 0.0  # time this (writer) process spent waiting for reader results
    # keys two origins hold: (key, origin that lost it, origin that owns it); see write_results
    conflicts: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    def waited(self, seconds: float) -> None:
        self.waited_s += seconds


# A read task: (key, its current paths joined by NUL) per key. One string a key pickles several
# times cheaper than a list of paths, and the reader splits it.
Task = list[tuple[str, str]]


@dataclass(frozen=True)
class ReadSettings:
    """How a run reads: the same for every task of it (sent along with each, a few bytes)."""

    root: str
    scan_start_ns: int  # files younger than the racy window before this are re-read next run
    verify_images: bool = False
    workers: int = 1
    engine: str = "local"  # where reading runs (engines.py): local, or ray
    ray_address: str | None = None


def task_failed(call: tuple, exc: Exception) -> list[CompactResult]:
    """A read task (its Task first in the call) that failed for good (a Ray task out of retries):
    each of its keys is recorded read_failed, to be read again by the next run."""
    return [failed_sample(key, paths.split("\0") if paths else [], exc) for key, paths in call[0]]


def read_task(task: Task, settings: ReadSettings) -> list[CompactResult]:
    """Read a task's keys (in a reader process), each under the guard: a key whose read raises
    is that key's recorded problem, not the end of the task."""
    results = []
    root, scan_start_ns, verify_images = settings.root, settings.scan_start_ns, settings.verify_images
    for key, joined in task:
        paths = joined.split("\0") if joined else []
        try:
            results.append(compact(key, *read_sample(root, key, paths, scan_start_ns, verify_images)))
        except Exception as exc:
            raise_if_environment(exc)
            results.append(failed_sample(key, paths, exc))
    return results
