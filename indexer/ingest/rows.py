"""What a reader hands the write path: a read sample as flat rows, and what a run counted.

Shared by the two ways samples are written (pipeline.py merges results into stored rows;
bulk.py copies a first run's rows in from the readers' scratch databases), and by the tar shard
readers and `extract`, which build the same rows from members.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from indexer.ingest.change import FileRecord
from indexer.ingest.guard import failed_sample, raise_if_environment
from indexer.ingest.read import SampleRecord, read_sample

# The samples columns a read decides, in the order of a CompactResult's sample row.
STORED_COLUMNS = ("image_ext", "json_ext", "width", "height", "size_from", "status", "error", "warning",
                  "meta")
# The stat record of a sample's files, stored in its row (schema 009): change.FileRecord decides
# the signature (NEVER_MATCHES for a file too young to trust) and the stored mtime.
STAT_COLUMNS = ("json_size", "json_sig", "image_size", "image_mtime_ns", "image_sig", "other_files",
                "shard", "json_offset", "image_offset")  # the last three: members of a tar shard
SHARD_AT = STAT_COLUMNS.index("shard")
JSON_SIZE_AT = STAT_COLUMNS.index("json_size")
OTHER_FILES_AT = STAT_COLUMNS.index("other_files")
# What a reader sends back per key: (key, content row (STORED_COLUMNS) or None when no file is
# left, stat row (STAT_COLUMNS), files read). Flat tuples of str/int only: they pickle several
# times cheaper than the reader's objects, and go to executemany as they are.
CompactResult = tuple[str, tuple | None, tuple | None, int]


def compact(key: str, sample: SampleRecord | None, files: list[FileRecord], files_read: int) -> CompactResult:
    """A read result in the form write_results stores (computed in the reader processes)."""
    if sample is None:
        return key, None, None, files_read
    json_stat = image_stat = None
    others = []
    for record in files:
        path = record.path
        if path == sample.json:
            json_stat = (record.size, record.signature)
        elif path == sample.image:
            image_stat = (record.size, record.stored_mtime_ns, record.signature)
        else:
            others.append([path[len(key) + 1 :], record.size, record.stored_mtime_ns, record.signature])
    image, json_path, *rest = sample
    cut = len(key) + 1
    row = (image[cut:] if image else None, json_path[cut:] if json_path else None, *rest)
    stats = (*(json_stat or (None, None)), *(image_stat or (None, None, None)),
             orjson.dumps(sorted(others)).decode() if others else None, None, None, None)
    return key, row, stats, files_read


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


def read_task(task: Task, root: str, scan_start_ns: int, verify_images: bool) -> list[CompactResult]:
    """Read a task's keys (in a reader process), each under the guard: a key whose read raises
    is that key's recorded problem, not the end of the task."""
    results = []
    for key, joined in task:
        paths = joined.split("\0") if joined else []
        try:
            results.append(compact(key, *read_sample(root, key, paths, scan_start_ns, verify_images)))
        except Exception as exc:
            raise_if_environment(exc)
            results.append(failed_sample(key, paths, exc))
    return results


def json_bytes_in(stats: tuple) -> int:
    """The JSON bytes a stat row records: its JSON, plus any other spelling of one (x.JSON)."""
    total = stats[JSON_SIZE_AT] or 0
    if stats[OTHER_FILES_AT]:
        total += sum(size for ext, size, *_ in orjson.loads(stats[OTHER_FILES_AT]) if ext.lower() == "json")
    return total
